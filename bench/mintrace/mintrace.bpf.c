// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The baseline of the syscall benchmark: the least a libbpf tracer can do. raw_tp sys_enter,
 * one pid, a ring buffer without wakeups; the consumer polls on a timer. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct rec {
	__u64 ts;
	__u32 tid;
	__u32 nr;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);
} rb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

__u64 lost = 0;

SEC("raw_tp/sys_enter")
int on_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 k = 0, *t = bpf_map_lookup_elem(&target, &k);
	__u64 id = bpf_get_current_pid_tgid();
	struct rec *r;

	if (!t || (id >> 32) != *t)
		return 0;
	r = bpf_ringbuf_reserve(&rb, sizeof(*r), 0);
	if (!r) {
		__sync_fetch_and_add(&lost, 1);
		return 0;
	}
	r->ts = bpf_ktime_get_ns();
	r->tid = (__u32)id;
	r->nr = ctx->args[1];
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}
