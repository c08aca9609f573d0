// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * File, network and security activity (the files in bpf/activity/) from ONE pair of raw sys_enter/sys_exit
 * programs: every syscall on the host pays for each program attached there (measured: a getppid
 * storm ran 1.53x to 1.70x bare under one such pair, 2.32x under three), so the three concerns
 * share the pair and each keeps its own maps and ring buffer. The loader switches them on and
 * off through .rodata, and the verifier drops what is off.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sensor.h"
#include "lib/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool file_on = true;
const volatile bool net_on = true;
const volatile bool security_on = true;

#include "activity/file.c"
#include "activity/net.c"
#include "activity/security.c"

SEC("tp_btf/sys_enter")
int BPF_PROG(activity_enter, struct pt_regs *regs, long id)
{
	if (file_on)
		file_on_enter(regs, id);
	if (net_on)
		net_on_enter(regs, id);
	if (security_on)
		security_on_enter(regs, id);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(activity_exit, struct pt_regs *regs, long ret)
{
	__u32 nr = syscall_nr(regs);

	/* each part checks the number before any per-thread lookup: this runs on every syscall */
	if (file_on || block_on) /* block_on: opens of blocked files (activity/file.c) */
		file_on_exit(nr, ret);
	if (net_on)
		net_on_exit(nr, ret);
	if (security_on)
		security_on_exit(nr, ret);
	return 0;
}
