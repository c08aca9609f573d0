/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Helpers shared by every program: the ring buffer, loss counting, self-exclusion. */
#ifndef __SENSOR_COMMON_H
#define __SENSOR_COMMON_H

#include "../sensor.h"
#include "maps.h"

/* Set by the loader before load. 0 wakes the reader on every record; otherwise the reader is
 * woken only once this many bytes wait, and polls on a short timer for the rest (a wakeup per
 * record costs more than the tracing itself on syscall storms). */
const volatile __u64 wakeup_bytes = 0;

/* clang writes to BTF only the types a global uses (by value: pointers leave forward
 * declarations); this never-read global keeps the wire structs in every object's BTF, so tests
 * check sensor/wire.py against the compiled layout. exec_event ends in data[], so it goes last. */
const volatile struct {
	struct event_header header;
	struct fork_event fork;
	struct exit_event exit;
	struct tamper_event tamper;
	struct syscall_spec spec;
	struct file_key file_key;
	struct syscall_event syscall;
	struct syscall_args_event syscall_args;
	struct trace_batch trace_batch;
	struct trace_held trace_held;
	struct prefix_key prefix_key;
	struct file_call file_call;
	struct net_event net;
	struct sec_call sec_call;
	struct sec_event sec;
	struct file_event file;
	struct exec_event exec;
} wire_anchor;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Failed reserves per event type: loss is never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");


/* Processes (tgid -> 1) that `sensor trace` follows. Shared by the process and trace programs
 * (user space hands one object's map to the other); empty and unallocated otherwise. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

static __always_inline bool is_traced(__u32 tgid)
{
	return bpf_map_lookup_elem(&traced, &tgid) != NULL;
}

/* The same set as a bitmap over tgids, tested on every syscall instead of the hash (measured:
 * a hash lookup per call costs about 45 ns, a word of an array next to nothing). The hash stays
 * the truth: trace.bpf.c sets a tgid's bit the first time it finds the tgid there, and the exit
 * program clears it. Sized by trace mode (wire.TRACE_BITS_WORDS); one unused word otherwise. */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} trace_bits SEC(".maps");

static __always_inline bool trace_bit(__u32 tgid)
{
	__u32 word = tgid >> 6;
	__u64 *bits = bpf_map_lookup_elem(&trace_bits, &word);

	return bits && (*bits >> (tgid & 63)) & 1;
}

static __always_inline void trace_bit_set(__u32 tgid, bool on)
{
	__u32 word = tgid >> 6;
	__u64 *bits = bpf_map_lookup_elem(&trace_bits, &word);

	if (!bits)
		return;
	/* atomic: threads of one process, or neighbouring tgids, change a word at once */
	if (on)
		__sync_fetch_and_or(bits, 1ULL << (tgid & 63));
	else
		__sync_fetch_and_and(bits, ~(1ULL << (tgid & 63)));
}

static __always_inline void count_lost_n(__u32 type, __u64 count)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &type);

	if (n)
		*n += count;
}

static __always_inline void count_lost(__u32 type)
{
	count_lost_n(type, 1);
}

/* 6.18's ring lock (rqspinlock) fails a reserve now and then, for a moment, with the ring nearly
 * empty (measured: 1 to 12 records per 4,000,000 getppid calls; none in 8 runs with up to 64
 * tries). A full ring fails every try, and only then is the record counted lost. */
#define RESERVE_TRIES 64

#define reserve_retry(rb, size)                                                  \
	({                                                                       \
		void *__rec = NULL;                                              \
		for (int __try = 0; __try < RESERVE_TRIES && !__rec; __try++)    \
			__rec = bpf_ringbuf_reserve(rb, size, 0);                \
		__rec;                                                           \
	})

static __always_inline long output_retry(void *rb, void *data, __u64 size, __u64 flags)
{
	long err = -1;

	for (int i = 0; i < RESERVE_TRIES && err; i++)
		err = bpf_ringbuf_output(rb, data, size, flags);
	return err;
}

static __always_inline bool ignored(__u32 tgid)
{
	return bpf_map_lookup_elem(&ignored_tgids, &tgid) != NULL;
}

static __always_inline __u64 submit_flags(void)
{
	if (!wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void fill_header(struct event_header *hdr, __u32 type, __u32 size,
					struct task_struct *task)
{
	hdr->ts_ns = bpf_ktime_get_boot_ns();
	hdr->type = type;
	hdr->size = size;
	hdr->pid = BPF_CORE_READ(task, tgid);
	hdr->tid = BPF_CORE_READ(task, pid);
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->_pad = 0;
}

/* /proc/PID/stat reports start_boottime (since 5.5; real_start_time before), so entity ids made
 * from the kernel's events and from a /proc snapshot agree. */
struct task_struct___pre55 {
	u64 real_start_time;
} __attribute__((preserve_access_index));

static __always_inline __u64 task_start_ns(struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	if (bpf_core_field_exists(leader->start_boottime))
		return BPF_CORE_READ(leader, start_boottime);
	return BPF_CORE_READ((struct task_struct___pre55 *)leader, real_start_time);
}

#endif /* __SENSOR_COMMON_H */
