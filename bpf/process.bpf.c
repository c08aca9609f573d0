// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process lifecycle: exec, fork/clone, exit, from scheduler tracepoints (no kprobes needed). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sensor.h"
#include "lib/common.h"
#include "lib/path.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Thread creation is frequent and rarely wanted; off unless the loader asks. */
const volatile bool trace_threads = false;
/* `sensor trace`: report only the traced processes; with follow_forks their new children join
 * the traced set here, in the kernel, before they run an instruction. */
const volatile bool only_traced = false;
const volatile bool follow_forks = true;

/* Exec records are too large for the BPF stack: build them here, then copy out only the bytes
 * used with bpf_ringbuf_output. */
struct exec_scratch {
	char buf[sizeof(struct exec_event) + EXEC_DATA_MAX + ARGS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0, off = 0;
	struct exec_scratch *s;
	struct exec_event *e;
	struct task_struct *parent;
	struct mm_struct *mm;
	bool truncated;
	long n;

	if (ignored(BPF_CORE_READ(p, tgid)))
		return 0;
	if (only_traced && !is_traced(BPF_CORE_READ(p, tgid)))
		return 0;
	s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return 0;
	e = (struct exec_event *)s->buf;

	parent = BPF_CORE_READ(p, real_parent);
	e->start_ns = task_start_ns(p);
	e->parent_start_ns = task_start_ns(parent);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->parent_tid = BPF_CORE_READ(parent, pid);
	e->old_tid = old_pid;
	e->uid = BPF_CORE_READ(p, real_cred, uid.val);
	e->gid = BPF_CORE_READ(p, real_cred, gid.val);
	e->euid = BPF_CORE_READ(p, real_cred, euid.val);
	e->egid = BPF_CORE_READ(p, real_cred, egid.val);
	/* loginuid/sessionid exist only with CONFIG_AUDIT(SYSCALL) */
	e->loginuid = bpf_core_field_exists(p->loginuid) ? BPF_CORE_READ(p, loginuid.val) : -1;
	e->sessionid = bpf_core_field_exists(p->sessionid) ? BPF_CORE_READ(p, sessionid) : -1;
	e->argc = BPF_CORE_READ(bprm, argc);
	e->flags = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	/* The new image's argv sits on its fresh stack, between arg_start and arg_end. */
	mm = BPF_CORE_READ(p, mm);
	__u64 arg_start = BPF_CORE_READ(mm, arg_start);
	__u64 args_len = BPF_CORE_READ(mm, arg_end) - arg_start;
	if (args_len > ARGS_MAX) {
		args_len = ARGS_MAX;
		e->flags |= FLAG_ARGS_TRUNCATED;
	}
	if (bpf_probe_read_user(e->data, args_len, (void *)arg_start) == 0)
		off = args_len;
	e->args_len = off;

	n = bpf_probe_read_kernel_str(&e->data[off & (EXEC_DATA_MAX - 1)], FILENAME_MAX_LEN,
				      BPF_CORE_READ(bprm, filename));
	if (n > 0) {
		if (n == FILENAME_MAX_LEN)
			e->flags |= FLAG_FILENAME_TRUNCATED;
		off += n;
	}
	e->filename_len = n > 0 ? n : 0;

	struct file *exe = BPF_CORE_READ(mm, exe_file);
	struct file_key key = {
		.dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(exe, f_inode, i_ino),
	};
	/* The new image is mapped but has not run an instruction yet: SIGKILL here means it never
	 * does. A script's exe_file is its interpreter's: activity/file.c stops a blocked script
	 * when the interpreter opens it. */
	if (bpf_map_lookup_elem(&blocked_exec, &key)) {
		bpf_send_signal(9);
		e->flags |= FLAG_BLOCKED;
	}
	if (bpf_map_lookup_elem(&written, &key))
		e->flags |= FLAG_WRITTEN;
	/* a script: exe_file is its interpreter, bprm->executable the script itself (5.8+) */
	if (bpf_core_field_exists(bprm->executable)) {
		struct file *script = BPF_CORE_READ(bprm, executable);

		if (script) {
			struct file_key skey = {
				.dev = BPF_CORE_READ(script, f_inode, i_sb, s_dev),
				.ino = BPF_CORE_READ(script, f_inode, i_ino),
			};

			if (bpf_map_lookup_elem(&written, &skey))
				e->flags |= FLAG_WRITTEN;
		}
	}
	e->exe_len = read_path(&exe->f_path, e->data, &off, &truncated);
	if (truncated)
		e->flags |= FLAG_EXE_TRUNCATED;
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	e->cwd_len = read_path(&fs->pwd, e->data, &off, &truncated);
	if (truncated)
		e->flags |= FLAG_CWD_TRUNCATED;

	__u64 size = sizeof(*e) + off;
	barrier_var(size); /* keep clang from folding the bound check the verifier needs */
	if (size > sizeof(*e) + EXEC_DATA_MAX)
		size = sizeof(*e) + EXEC_DATA_MAX;
	fill_header(&e->hdr, EVENT_EXEC, size, p);
	if (output_retry(&events, e, size, submit_flags()))
		count_lost(EVENT_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	struct fork_event *e;
	bool thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);

	if (only_traced) {
		if (!is_traced(BPF_CORE_READ(parent, tgid)))
			return 0;
		if (follow_forks && !thread) {
			__u32 tgid = BPF_CORE_READ(child, tgid);
			__u8 one = 1;

			bpf_map_update_elem(&traced, &tgid, &one, BPF_ANY);
		}
	}
	if (thread && !trace_threads)
		return 0;
	if (ignored(BPF_CORE_READ(parent, tgid)))
		return 0;
	e = reserve_retry(&events, sizeof(*e));
	if (!e) {
		count_lost(EVENT_FORK);
		return 0;
	}
	fill_header(&e->hdr, EVENT_FORK, sizeof(*e), parent);
	e->start_ns = task_start_ns(child);
	e->parent_start_ns = task_start_ns(parent);
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->child_tid = BPF_CORE_READ(child, pid);
	e->flags = thread ? FLAG_THREAD : 0;
	e->uid = BPF_CORE_READ(child, real_cred, uid.val);
	BPF_CORE_READ_STR_INTO(&e->comm, child, comm);
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p)
{
	struct exit_event *e;

	__u32 tgid = BPF_CORE_READ(p, tgid);

	/* a thread that outlived its leader may have set the bit again: the last one clears it */
	if (only_traced && trace_bit(tgid) && !is_traced(tgid))
		trace_bit_set(tgid, false);
	/* one record per process: the thread group leader's exit */
	if (BPF_CORE_READ(p, pid) != tgid)
		return 0;
	if (ignored(tgid))
		return 0;
	if (only_traced) {
		if (!is_traced(tgid))
			return 0;
		/* the pid may be reused by a process we were never asked to trace */
		bpf_map_delete_elem(&traced, &tgid);
		trace_bit_set(tgid, false);
	}
	e = reserve_retry(&events, sizeof(*e));
	if (!e) {
		count_lost(EVENT_EXIT);
		return 0;
	}
	fill_header(&e->hdr, EVENT_EXIT, sizeof(*e), p);
	e->start_ns = task_start_ns(p);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}

/* Self-protection: signals and ptrace requests that other processes aim at the sensor. */
static __always_inline void report_tamper(__u32 target, __u32 kind, __u32 sig, __u32 request)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct tamper_event *e = reserve_retry(&events, sizeof(*e));

	if (!e) {
		count_lost(EVENT_TAMPER);
		return;
	}
	fill_header(&e->hdr, EVENT_TAMPER, sizeof(*e), task);
	e->target_pid = target;
	e->kind = kind;
	e->sig = sig;
	e->request = request;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0); /* rare, and urgent: wake the reader */
}

SEC("tp_btf/signal_generate")
int BPF_PROG(handle_signal, int sig, struct kernel_siginfo *info, struct task_struct *task)
{
	__u32 target = BPF_CORE_READ(task, tgid);

	/* SIGCHLD (17) is the kernel reporting our own children's exits */
	if (sig == 17 || !ignored(target) || ignored(bpf_get_current_pid_tgid() >> 32))
		return 0;
	report_tamper(target, TAMPER_SIGNAL, sig, 0);
	return 0;
}

/* A classic tracepoint (needs tracefs). It runs for ptrace only, but it hooks the raw sys_enter
 * tracepoint like every syscall event: attached only when no other program sees ptrace. */
SEC("tracepoint/syscalls/sys_enter_ptrace")
int handle_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	__u32 target = ctx->args[1];

	if (!ignored(target) || ignored(bpf_get_current_pid_tgid() >> 32))
		return 0;
	report_tamper(target, TAMPER_PTRACE, 0, ctx->args[0]);
	return 0;
}
