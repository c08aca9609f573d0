// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Syscall tracing of chosen processes: entry and exit paired in the kernel, one record per call.
 * Membership (the `traced` map) is kept by process.bpf.c's fork/exit handlers and user space. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sensor.h"
#include "lib/common.h"
#include "lib/syscall.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool filter_syscalls = false; /* keep only syscall_spec[nr] & SPEC_WANTED */
const volatile bool with_args = false;
const volatile __u32 nr_exit = 60;        /* set by user space from its syscall table */
const volatile __u32 nr_exit_group = 231;
const volatile __u32 nr_execve = 59;
const volatile __u32 nr_execveat = 322;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYSCALL_NR_MAX);
	__type(key, __u32);
	__type(value, struct syscall_spec);
} syscall_spec SEC(".maps");

/* The call in flight, per task. Task storage, not a tid-keyed hash: no pid-reuse mix-ups, and a
 * lookup is a pointer chase from the task, which matters at millions of calls per second. */
struct inflight {
	struct syscall_args_event rec; /* without --args only rec.sc is used */
	__u8 active;
	__u8 addr_at_exit;
	__u8 addrlen_arg;
	__u8 addr_arg;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight);
} inflight SEC(".maps");

static __always_inline __u16 read_path(char *dst, __u64 ptr, __u32 *flags, __u32 flag)
{
	long n = bpf_probe_read_user_str(dst, TRACE_PATH_MAX, (const void *)ptr);

	if (n <= 0)
		return 0;
	if (n == TRACE_PATH_MAX)
		*flags |= flag;
	return n;
}

static __always_inline __u16 read_addr(__u8 *dst, __u64 ptr, __u64 len)
{
	if (!ptr || !len)
		return 0;
	if (len > TRACE_ADDR_MAX)
		len = TRACE_ADDR_MAX;
	if (bpf_probe_read_user(dst, len, (const void *)ptr))
		return 0;
	return len;
}

static __always_inline void emit(struct inflight *in, long ret, __u64 now)
{
	struct syscall_event *sc = &in->rec.sc;

	sc->ret = ret;
	sc->duration_ns = now - sc->enter_ns;
	if (with_args) {
		if (output_retry(&events, &in->rec, sizeof(in->rec), submit_flags()))
			count_lost(EVENT_SYSCALL);
		return;
	}
	struct syscall_event *e = reserve_retry(&events, sizeof(*e));
	if (!e) {
		count_lost(EVENT_SYSCALL);
		return;
	}
	*e = *sc;
	bpf_ringbuf_submit(e, submit_flags());
}

static __always_inline void decode_args(struct inflight *in, struct syscall_spec *spec)
{
	struct syscall_args_event *r = &in->rec;

	r->path_len = r->path2_len = r->addr_len = 0;
	in->addr_at_exit = 0;
	if (!spec)
		return;
	if (spec->path_arg < 6)
		r->path_len = read_path(r->path, r->args[spec->path_arg & 7], &r->sc.flags,
					SC_PATH_TRUNCATED);
	if (spec->path2_arg < 6)
		r->path2_len = read_path(r->path2, r->args[spec->path2_arg & 7], &r->sc.flags,
					 SC_PATH2_TRUNCATED);
	if (spec->addr_arg < 6 && spec->addrlen_arg < 6) {
		if (spec->flags & SPEC_ADDR_AT_EXIT) {
			/* filled by the kernel during the call: read it at exit */
			in->addr_at_exit = 1;
			in->addr_arg = spec->addr_arg;
			in->addrlen_arg = spec->addrlen_arg;
		} else {
			r->addr_len = read_addr(r->addr, r->args[spec->addr_arg & 7],
						r->args[spec->addrlen_arg & 7]);
		}
	}
}

static __always_inline int on_enter(__u32 nr, struct pt_regs *regs)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct syscall_spec *spec = NULL;
	struct inflight *in;
	__u8 *state = bpf_map_lookup_elem(&traced, &tgid);
	int i;

	if (!state)
		return 0;
	if (*state == TRACE_ARMED) {
		if (nr != nr_execve && nr != nr_execveat)
			return 0;
		*state = TRACE_ON;
	}
	if (filter_syscalls || with_args) {
		spec = bpf_map_lookup_elem(&syscall_spec, &nr);
		if (filter_syscalls && (!spec || !(spec->flags & SPEC_WANTED)))
			return 0;
	}
	in = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!in) {
		count_lost(EVENT_SYSCALL);
		return 0;
	}
	in->rec.sc.enter_ns = bpf_ktime_get_boot_ns();
	in->rec.sc.pid = tgid;
	in->rec.sc.tid = (__u32)pid_tgid;
	in->rec.sc.nr = nr;
	in->rec.sc.flags = 0;
	if (with_args) {
		for (i = 0; i < 6; i++)
			in->rec.args[i] = syscall_arg(regs, i);
		decode_args(in, spec);
	}
	if (nr == nr_exit || nr == nr_exit_group) {
		/* never returns: report it now */
		in->rec.sc.flags |= SC_NO_RETURN;
		in->active = 0;
		emit(in, 0, in->rec.sc.enter_ns);
		return 0;
	}
	in->active = 1;
	return 0;
}

static __always_inline int on_exit(long ret)
{
	struct inflight *in = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);

	/* no storage: never traced; inactive: the entry was filtered or came before attach */
	if (!in || !in->active)
		return 0;
	in->active = 0;
	if (with_args && in->addr_at_exit && ret >= 0) {
		__u32 len = 0;
		__u64 lenp = in->rec.args[in->addrlen_arg & 7];

		if (lenp && !bpf_probe_read_user(&len, sizeof(len), (const void *)lenp))
			in->rec.addr_len = read_addr(in->rec.addr, in->rec.args[in->addr_arg & 7], len);
	}
	emit(in, ret, bpf_ktime_get_boot_ns());
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(trace_enter, struct pt_regs *regs, long id)
{
	return on_enter(id, regs);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(trace_exit, struct pt_regs *regs, long ret)
{
	return on_exit(ret);
}
