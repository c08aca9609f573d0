// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Enforcement through BPF LSM, where the kernel loads it: a clean -EPERM for blocked executables
 * and refused SIGKILL/SIGSTOP at the sensor. Where it does not (lockdown refuses LSM programs on
 * our kernels), process.bpf.c's bpf_send_signal at sched_process_exec blocks executables instead.
 * Both maps are the process object's own (user space shares them). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sensor.h"
#include "lib/maps.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1

/* Runs for each binary handler tried, so a script's own file is checked before its interpreter. */
SEC("lsm/bprm_check_security")
int BPF_PROG(deny_exec, struct linux_binprm *bprm, int ret)
{
	struct file_key key = {
		.dev = BPF_CORE_READ(bprm, file, f_inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(bprm, file, f_inode, i_ino),
	};

	if (ret)
		return ret;
	return bpf_map_lookup_elem(&blocked_exec, &key) ? -EPERM : 0;
}

/* SIGKILL and SIGSTOP at the sensor are refused unless they come from pid 1 (the service
 * manager stopping it); SIGTERM stays allowed so the sensor can be stopped cleanly, and is
 * reported as tampering by process.bpf.c either way. */
SEC("lsm/task_kill")
int BPF_PROG(deny_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred, int ret)
{
	__u32 target = BPF_CORE_READ(p, tgid), sender = bpf_get_current_pid_tgid() >> 32;

	if (ret)
		return ret;
	if ((sig != 9 && sig != 19) || sender == 1 || !bpf_map_lookup_elem(&ignored_tgids, &target))
		return 0;
	return bpf_map_lookup_elem(&ignored_tgids, &sender) ? 0 : -EPERM;
}
