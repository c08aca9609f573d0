// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Syscall tracing of chosen processes: entry and exit paired in the kernel, one record per call,
 * sent to the ring in per-CPU batches (struct trace_batch in sensor.h). Membership (the `traced`
 * map) is kept by process.bpf.c's fork/exit handlers and user space. */
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

/* The call in flight. Entry fills this CPU's `pending` slot and exit reads it back, unless the
 * task left the CPU in between: then sched_switch moves the slot into the task's storage
 * (`inflight`), where exit finds it. Measured on a getppid storm: the per-CPU slot costs about
 * 30 ns a call less than a task-storage get at both ends. The programs run with preemption off,
 * so nothing else touches the slot between its test and its use. */
struct inflight {
	struct syscall_args_event rec; /* without --args only rec.sc is used */
	__u8 active;
	__u8 addr_at_exit;
	__u8 addrlen_arg;
	__u8 addr_arg;
};

struct pending {
	struct inflight in;
	__u64 owner; /* the task (pointer, not tid: execve can change a thread's tid), or 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} pending SEC(".maps");

/* Finished records waiting to reach the ring together (struct trace_batch in sensor.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_batch);
} batch SEC(".maps");

/* Batches the ring refused, oldest first (struct trace_held in sensor.h). One queue for all CPUs:
 * a thread whose records wait here may already run on another CPU, so while anything waits,
 * every CPU queues its batches behind it and a thread's records still reach the ring in order. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRACE_HELD);
	__type(key, __u32);
	__type(value, struct trace_held);
} held SEC(".maps");

/* Batches that have waited in `held`: how often the ring refused one (metadata.json reports it). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} held_count SEC(".maps");

/* Queue positions: the batches from held_head to held_tail wait. Only the CPU that holds
 * held_sending sends them and moves held_head; held_tail is claimed with compare-and-swap. */
__u64 held_head, held_tail, held_sending;

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define HOLD_TRIES 64 /* claims lost to other CPUs before a batch counts as lost: a CPU's bound */
#define DRAIN_MAX 16  /* batches one program run sends from the queue: bounds a task switch's delay */

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

/* Sends n records as one ring record. A refusal with room left in the ring is 6.18's ring lock
 * giving up for a moment: tried again, up to `tries` times in all; a full ring fails at once. */
static __always_inline bool output(void *recs, __u32 n, int tries)
{
	__u64 size = with_args ? sizeof(struct syscall_args_event) : sizeof(struct syscall_event);
	__u64 flags = submit_flags(), bytes = (__u64)n * size;

	for (int i = 0; i < tries; i++) {
		barrier_var(bytes); /* bound it next to the call: the verifier must see it */
		if (!bytes || bytes > TRACE_BATCH_BYTES)
			return false;
		if (!bpf_ringbuf_output(&events, recs, bytes, flags))
			return true;
		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + bytes + BPF_RINGBUF_HDR_SZ >=
		    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE))
			return false;
	}
	return false;
}

/* Queues a batch behind those already waiting; counted lost when the queue is full. */
static __always_inline void hold(struct trace_batch *b)
{
	__u64 size = with_args ? sizeof(struct syscall_args_event) : sizeof(struct syscall_event);
	__u64 bytes = sizeof(b->n) + sizeof(b->_pad) + (__u64)b->n * size, *count;
	__u32 zero = 0;

	for (int i = 0; i < HOLD_TRIES; i++) {
		__u64 pos = READ_ONCE(held_tail), lap = pos / TRACE_HELD * 2, turn;
		__u32 key = pos & (TRACE_HELD - 1);
		struct trace_held *h = bpf_map_lookup_elem(&held, &key);

		if (!h)
			break;
		turn = READ_ONCE(h->turn);
		if (turn < lap) /* it still holds the batch of a lap ago: the queue is full */
			break;
		if (turn != lap || __sync_val_compare_and_swap(&held_tail, pos, pos + 1) != pos)
			continue; /* another CPU took this position first */
		barrier_var(bytes);
		if (bytes > sizeof(*b))
			bytes = sizeof(*b);
		bpf_probe_read_kernel(&h->batch, bytes, b); /* a helper copy: up to 11 KiB */
		__sync_lock_test_and_set(&h->turn, lap + 1); /* a full barrier: the copy is seen first */
		count = bpf_map_lookup_elem(&held_count, &zero);
		if (count)
			*count += 1;
		return;
	}
	count_lost_n(EVENT_SYSCALL, b->n);
}

/* Sends the waiting batches, oldest first, until the ring refuses one. One CPU at a time: a CPU
 * that finds another sending leaves them to it, or to the next batch or task switch. */
static __always_inline void drain(void)
{
	if (__sync_val_compare_and_swap(&held_sending, 0, 1))
		return;
	for (int i = 0; i < DRAIN_MAX; i++) {
		__u64 pos = held_head, full = pos / TRACE_HELD * 2 + 1;
		__u32 key = pos & (TRACE_HELD - 1);
		struct trace_held *h = bpf_map_lookup_elem(&held, &key);

		/* not full: nothing waits, or a CPU is still copying its batch in */
		if (!h || __sync_fetch_and_or(&h->turn, 0) != full)
			break;
		if (!output(h->batch.recs, h->batch.n, 1))
			break;
		__sync_lock_test_and_set(&h->turn, full + 1);
		held_head = pos + 1;
	}
	__sync_lock_test_and_set(&held_sending, 0);
}

/* The CPU's batch goes to the ring, or else waits in the queue: never ahead of a waiting one. */
static __always_inline void flush(struct trace_batch *b)
{
	if (!b->n)
		return;
	if (READ_ONCE(held_head) == READ_ONCE(held_tail) && output(b->recs, b->n, RESERVE_TRIES)) {
		b->n = 0;
		return;
	}
	hold(b);
	b->n = 0;
	drain();
}

static __always_inline void emit(struct inflight *in, long ret, __u64 now)
{
	struct syscall_event *sc = &in->rec.sc;
	__u32 zero = 0, i;
	struct trace_batch *b = bpf_map_lookup_elem(&batch, &zero);

	if (!b) {
		count_lost(EVENT_SYSCALL);
		return;
	}
	sc->ret = ret;
	sc->duration_ns = now - sc->enter_ns;
	i = b->n;
	if (with_args) {
		struct syscall_args_event *recs = (void *)b->recs;

		/* a helper copy: clang will not copy 736 bytes inline */
		bpf_probe_read_kernel(&recs[i & (TRACE_BATCH_ARGS - 1)], sizeof(in->rec), &in->rec);
		b->n = ++i;
		if (i >= TRACE_BATCH_ARGS)
			flush(b);
	} else {
		struct syscall_event *recs = (void *)b->recs;

		recs[i & (TRACE_BATCH - 1)] = *sc;
		b->n = ++i;
		if (i >= TRACE_BATCH)
			flush(b);
	}
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

/* Whether the calling process is traced: its bit, or else the `traced` hash (a process that
 * just joined, or a launched command still ARMED, which starts at its execve). */
static __always_inline bool traced_now(__u32 tgid, __u32 nr)
{
	__u8 *state;

	if (trace_bit(tgid))
		return true;
	state = bpf_map_lookup_elem(&traced, &tgid);
	if (!state)
		return false;
	if (*state == TRACE_ARMED) {
		if (nr != nr_execve && nr != nr_execveat)
			return false;
		*state = TRACE_ON;
	}
	trace_bit_set(tgid, true);
	return true;
}

static __always_inline int on_enter(__u32 nr, struct pt_regs *regs)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, zero = 0;
	struct syscall_spec *spec = NULL;
	struct pending *p;
	struct inflight *in;
	int i;

	if (!traced_now(tgid, nr))
		return 0;
	if (filter_syscalls || with_args) {
		spec = bpf_map_lookup_elem(&syscall_spec, &nr);
		if (filter_syscalls && (!spec || !(spec->flags & SPEC_WANTED)))
			return 0;
	}
	p = bpf_map_lookup_elem(&pending, &zero);
	if (!p)
		return 0;
	if (p->owner) /* another task's call, never moved out: cannot happen, but never silent */
		count_lost(EVENT_SYSCALL);
	in = &p->in;
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
		p->owner = 0;
		emit(in, 0, in->rec.sc.enter_ns);
		return 0;
	}
	p->owner = bpf_get_current_task();
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u32 zero = 0;
	struct pending *p = bpf_map_lookup_elem(&pending, &zero);
	struct inflight *in;

	if (!p)
		return 0;
	if (p->owner == bpf_get_current_task()) {
		p->owner = 0;
		in = &p->in;
	} else {
		/* the task slept or was preempted during the call; or it is not traced at all, or
		 * this call was filtered out or began before the trace */
		if (!trace_bit(bpf_get_current_pid_tgid() >> 32))
			return 0;
		in = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
		if (!in || !in->active)
			return 0;
		in->active = 0;
	}
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

/* A task switch: the CPU's batch is sent, and a traced task that leaves inside a call takes its
 * slot along in its own storage. */
SEC("tp_btf/sched_switch")
int BPF_PROG(trace_switch, bool preempt, struct task_struct *prev)
{
	__u32 zero = 0;
	struct pending *p = bpf_map_lookup_elem(&pending, &zero);
	struct trace_batch *b = bpf_map_lookup_elem(&batch, &zero);
	struct inflight *in;

	/* whatever ran here goes to the ring before any of those threads can run elsewhere */
	if (b && b->n)
		flush(b);
	else if (READ_ONCE(held_head) != READ_ONCE(held_tail))
		drain();
	if (!p || p->owner != (__u64)prev)
		return 0;
	p->owner = 0;
	in = bpf_task_storage_get(&inflight, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!in) {
		count_lost(EVENT_SYSCALL);
		return 0;
	}
	/* a helper copy: the record is too big (with --args) for clang to copy inline */
	bpf_probe_read_kernel(in, sizeof(*in), &p->in);
	in->active = 1;
	return 0;
}
