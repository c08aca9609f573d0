// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Feature probes for `sensor doctor`: each program is loaded (and attached) alone, then closed,
 * to learn what this kernel actually accepts, not what its config claims. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_rb SEC(".maps");

/* Never set: keeps the send_signal call reachable for the verifier but never taken. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} probe_arm SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf)
{
	void *r = bpf_ringbuf_reserve(&probe_rb, 8, 0);

	if (r)
		bpf_ringbuf_discard(r, 0);
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int probe_tracepoint(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_send_signal)
{
	__u32 zero = 0, *armed = bpf_map_lookup_elem(&probe_arm, &zero);

	if (armed && *armed == 0xdead)
		bpf_send_signal(9);
	return 0;
}

SEC("fentry/do_exit")
int BPF_PROG(probe_fentry)
{
	return 0;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(probe_lsm, struct linux_binprm *bprm)
{
	return 0;
}

SEC("kprobe/do_exit")
int probe_kprobe(void *ctx)
{
	return 0;
}
