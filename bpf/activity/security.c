// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Security-relevant syscalls from the raw sys_enter/sys_exit tracepoints: ptrace, uid/gid and
 * capability changes, module loads, bpf() by other processes, mounts, memfd_create, signals to
 * other processes, unshare/setns. Arguments are taken at entry (a killed target may be gone by
 * exit), the record is sent at exit with the return value.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sensor.h"
#include "lib/common.h"
#include "lib/fd.h"
#include "lib/path.h"
#include "lib/syscall.h"

/* The ring buffer of security records */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} sec_events SEC(".maps");

#define PTRACE_TRACEME 0
#define PTRACE_POKETEXT 4
#define PTRACE_POKEDATA 5
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206
#define BPF_PROG_LOAD_CMD 5
#define BPF_PROG_ATTACH_CMD 8
#define BPF_RAW_TRACEPOINT_OPEN_CMD 17
#define BPF_LINK_CREATE_CMD 28

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYSCALL_NR_MAX);
	__type(key, __u32);
	__type(value, struct sec_call);
} security_calls SEC(".maps");

/* Calls between entry and exit (tid -> the record so far). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sec_event);
} sec_pending SEC(".maps");

struct sec_scratch {
	struct sec_event ev;
	char walk[2 * FILE_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sec_scratch);
} sec_scratch SEC(".maps");

static __always_inline bool wanted(struct sec_call *c, struct pt_regs *regs, __u32 tgid)
{
	long a0 = syscall_arg(regs, 0), a1 = syscall_arg(regs, 1);

	switch (c->filter) {
	case SEC_PTRACE:
		return a0 == PTRACE_ATTACH || a0 == PTRACE_SEIZE || a0 == PTRACE_TRACEME ||
		       a0 == PTRACE_POKETEXT || a0 == PTRACE_POKEDATA;
	case SEC_SIGNAL: /* kill(pid, sig), tkill(tid, sig): sig is arg 1; tgkill(tgid, tid, sig) */
		return (int)a1 != 0 && (int)a0 != (int)tgid && (int)a0 > 0;
	case SEC_BPF:
		return a0 == BPF_PROG_LOAD_CMD || a0 == BPF_PROG_ATTACH_CMD ||
		       a0 == BPF_RAW_TRACEPOINT_OPEN_CMD || a0 == BPF_LINK_CREATE_CMD;
	}
	return true;
}

static __always_inline int security_on_enter(struct pt_regs *regs, long id)
{
	__u32 nr = id, zero = 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sec_call *c = bpf_map_lookup_elem(&security_calls, &nr);
	struct sec_scratch *s;
	int i;

	if (!c || !c->wanted || ignored(pid_tgid >> 32) || !wanted(c, regs, pid_tgid >> 32))
		return 0;
	s = bpf_map_lookup_elem(&sec_scratch, &zero);
	if (!s)
		return 0;
	struct sec_event *e = &s->ev;

	e->start_ns = task_start_ns((void *)bpf_get_current_task());
	e->nr = nr;
	e->ret = 0;
	e->flags = 0;
	for (i = 0; i < 6; i++)
		e->args[i] = syscall_arg(regs, i);
	for (i = 0; i < 3; i++)
		e->str_len[i] = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	fill_header(&e->hdr, EVENT_SECURITY, sizeof(*e), (void *)bpf_get_current_task());
	/* strings at entry: a mount target or memfd name may be freed memory by exit */
	for (i = 0; i < 3; i++) {
		__u8 a = c->str[i];

		if (a > 5)
			continue;
		long n = bpf_probe_read_user_str(e->str[i], SEC_STR_MAX, (const void *)e->args[a]);

		if (n > 0) {
			e->str_len[i] = n;
			if (n == SEC_STR_MAX)
				e->flags |= 1 << i;
		}
	}
	if (c->fd_path <= 5) {
		struct file *f = fd_file((int)e->args[c->fd_path]);

		if (f) {
			struct path p = BPF_CORE_READ(f, f_path);
			bool truncated;
			__u32 pos = path_string(&p, s->walk, &truncated);
			__u32 len = FILE_PATH_MAX - pos;

			if (len > SEC_STR_MAX - 1) { /* keep the leaf end */
				pos += len - (SEC_STR_MAX - 1);
				len = SEC_STR_MAX - 1;
				truncated = true;
			}
			bpf_probe_read_kernel(e->str[0], len & (SEC_STR_MAX - 1),
					      &s->walk[pos & (FILE_PATH_MAX - 1)]);
			e->str_len[0] = len & (SEC_STR_MAX - 1);
			if (truncated)
				e->flags |= 1;
		}
	}
	__u32 tid = (__u32)pid_tgid;

	bpf_map_update_elem(&sec_pending, &tid, e, BPF_ANY);
	return 0;
}

static __always_inline int security_on_exit(__u32 nr, long ret)
{
	struct sec_call *c = bpf_map_lookup_elem(&security_calls, &nr);

	if (!c || !c->wanted)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sec_event *e = bpf_map_lookup_elem(&sec_pending, &tid);

	if (!e)
		return 0;
	e->ret = ret;
	if (output_retry(&sec_events, e, sizeof(*e), 0))
		count_lost(EVENT_SECURITY);
	bpf_map_delete_elem(&sec_pending, &tid);
	return 0;
}
