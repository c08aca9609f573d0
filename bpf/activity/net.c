// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Network activity without kprobes. TCP connections from sock:inet_sock_set_state: the state
 * change to SYN_SENT runs in the connecting process, later ones often in softirq, so the owner
 * is remembered per socket and reported at establish and close. Accept, bind, listen and UDP
 * datagrams from the raw syscall tracepoints, where the calling process is current. UDP flows
 * are reported once per flow and interval; DNS (UDP port 53) carries its payload for user space
 * to parse.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sensor.h"
#include "lib/common.h"
#include "lib/fd.h"
#include "lib/syscall.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define DNS_PORT 53

/* The ring buffer of network records */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} net_events SEC(".maps");

/* Syscall numbers, set by user space from its table. */
const volatile __u32 nr_accept = -1, nr_accept4 = -1, nr_bind = -1, nr_listen = -1;
const volatile __u32 nr_sendto = -1, nr_sendmsg = -1, nr_sendmmsg = -1;
const volatile __u32 nr_recvfrom = -1, nr_recvmsg = -1;
/* One UDP record per flow (process, direction, peer, local port) per interval. */
const volatile __u64 flow_interval_ns = 60000000000ULL;

struct owner {
	__u64 start_ns; /* entity key */
	__u64 since_ns; /* connect or accept time */
	__u32 pid;
	__u32 tid;
	__u32 inbound;
	__u16 lport; /* known from establish on: a closing socket may have given its port back */
	__u16 _pad;
	char comm[TASK_COMM_LEN];
};

/* TCP sockets (struct sock *) -> the process that connected or accepted them */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

struct flow_key {
	__u32 tgid;
	__u16 op;
	__u16 lport;
	__u16 rport;
	__u16 _pad;
	__u32 netns;
	__u8 raddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u64);
} flows SEC(".maps");

/* A socket call between entry and exit (tid -> its arguments). */
struct call {
	__u64 args[6];
	__u32 nr;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct call);
} calls SEC(".maps");

struct net_record {
	struct net_event ev;
	char payload[2 * NET_PAYLOAD_MAX]; /* the upper half is slack for the verifier's bound */
};

/* A scratch record per CPU for each context that can be building one at the same time: the
 * syscall programs, the TCP state program, and its twin that runs when a softirq interrupts the
 * TCP state program (see handle_tcp_state_nested). */
enum { SCRATCH_SYSCALL, SCRATCH_TCP, SCRATCH_TCP_NESTED, SCRATCH_SLOTS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct net_record);
} net_scratch SEC(".maps");

static __always_inline struct net_record *net_scratch_get(__u32 slot)
{
	struct net_record *r = bpf_map_lookup_elem(&net_scratch, &slot);

	if (r)
		__builtin_memset(&r->ev, 0, sizeof(r->ev));
	return r;
}

/* The endpoints and namespace of @sk into @e. */
static __always_inline void fill_sock(struct net_event *e, struct sock *sk)
{
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (e->family == AF_INET) {
		bpf_core_read(e->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->raddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline void net_send(struct net_record *r, __u32 op, __u32 pid, __u32 tid)
{
	__u64 size = sizeof(r->ev) + (r->ev.payload_len & (NET_PAYLOAD_MAX - 1));

	if (r->ev.payload_len == NET_PAYLOAD_MAX)
		size = sizeof(r->ev) + NET_PAYLOAD_MAX;
	r->ev.op = op;
	r->ev.hdr.ts_ns = bpf_ktime_get_boot_ns();
	r->ev.hdr.type = EVENT_NET;
	r->ev.hdr.size = size;
	r->ev.hdr.pid = pid;
	r->ev.hdr.tid = tid;
	r->ev.hdr.cpu = bpf_get_smp_processor_id();
	if (output_retry(&net_events, r, size, 0))
		count_lost(EVENT_NET);
}

static __always_inline void send_current(struct net_record *r, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();

	r->ev.start_ns = task_start_ns((void *)bpf_get_current_task());
	bpf_get_current_comm(&r->ev.comm, sizeof(r->ev.comm));
	net_send(r, op, id >> 32, (__u32)id);
}

static __always_inline void remember(struct sock *sk, bool inbound, __u16 lport)
{
	__u64 id = bpf_get_current_pid_tgid(), key = (__u64)sk;
	struct owner o = {
		.start_ns = task_start_ns((void *)bpf_get_current_task()),
		.since_ns = bpf_ktime_get_boot_ns(),
		.pid = id >> 32,
		.tid = (__u32)id,
		.inbound = inbound,
		.lport = lport,
	};

	bpf_get_current_comm(&o.comm, sizeof(o.comm));
	bpf_map_update_elem(&owners, &key, &o, BPF_ANY);
}

/* ---- TCP ---- */

static __always_inline int tcp_state(struct sock *sk, int oldstate, int newstate, __u32 slot)
{
	__u64 key = (__u64)sk;
	struct owner *o;
	struct net_record *r;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) { /* in connect(): current is the caller */
		if (!ignored(bpf_get_current_pid_tgid() >> 32))
			remember(sk, false, 0);
		return 0;
	}
	if (!(oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) && newstate != TCP_CLOSE)
		return 0;
	o = bpf_map_lookup_elem(&owners, &key);
	if (!o)
		return 0; /* opened before the sensor started, or by the sensor */
	r = net_scratch_get(slot);
	if (!r)
		return 0;
	fill_sock(&r->ev, sk);
	r->ev.start_ns = o->start_ns;
	__builtin_memcpy(r->ev.comm, o->comm, sizeof(r->ev.comm));
	if (newstate == TCP_ESTABLISHED) {
		o->lport = r->ev.lport;
		net_send(r, NET_CONNECT, o->pid, o->tid);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) { /* refused or timed out */
		r->ev.flags = NET_FAILED;
		net_send(r, NET_CONNECT, o->pid, o->tid);
	} else {
		struct tcp_sock *tp = (struct tcp_sock *)sk;

		r->ev.duration_ns = bpf_ktime_get_boot_ns() - o->since_ns;
		if (!r->ev.lport)
			r->ev.lport = o->lport;
		/* payload bytes out (retransmissions included); bytes_acked would count SYN and FIN */
		r->ev.bytes_sent = BPF_CORE_READ(tp, bytes_sent);
		/* rcv_nxt moved one past the peer's FIN too: these states mean that FIN came */
		r->ev.bytes_received = BPF_CORE_READ(tp, bytes_received);
		if (r->ev.bytes_received && (oldstate == TCP_LAST_ACK || oldstate == TCP_CLOSE_WAIT ||
					     oldstate == TCP_CLOSING || oldstate == TCP_FIN_WAIT2))
			r->ev.bytes_received--;
		r->ev.flags = o->inbound ? NET_INBOUND : 0;
		net_send(r, NET_CLOSE, o->pid, o->tid);
	}
	bpf_map_delete_elem(&owners, &key);
	return 0;
}

/* TCP state changes happen in tasks and in softirqs. A softirq that interrupts
 * handle_tcp_state on its CPU would find it running, and the kernel skips a program already
 * running on the CPU (a recursion miss: measured, about 1 close in 350 under a loopback connect
 * storm). So a twin is attached too: it does nothing unless handle_tcp_state is running on its
 * CPU, that is unless it interrupted it, and then it records the change instead. Its own misses
 * (a change nested two deep) are the only loss; handle_tcp_state's are covered. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tcp_state_busy SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	__u32 zero = 0, *busy = bpf_map_lookup_elem(&tcp_state_busy, &zero);

	if (!busy)
		return 0;
	*busy = 1;
	tcp_state(sk, oldstate, newstate, SCRATCH_TCP);
	*busy = 0;
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tcp_state_nested, struct sock *sk, int oldstate, int newstate)
{
	__u32 zero = 0, *busy = bpf_map_lookup_elem(&tcp_state_busy, &zero);

	if (!busy || !*busy)
		return 0;
	return tcp_state(sk, oldstate, newstate, SCRATCH_TCP_NESTED);
}

/* ---- socket calls ---- */

static __always_inline struct sock *fd_sock(long fd)
{
	struct file *f = fd_file(fd);

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	return family == AF_INET || family == AF_INET6 ? sk : NULL;
}

static __always_inline bool tcp_dns(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP &&
	       (BPF_CORE_READ(sk, __sk_common.skc_num) == DNS_PORT ||
		BPF_CORE_READ(sk, __sk_common.skc_dport) == bpf_htons(DNS_PORT));
}

/* The peer of a sendto/recvfrom from the caller's sockaddr (unconnected UDP). */
static __always_inline void read_sockaddr(struct net_event *e, const void *uaddr)
{
	__u16 family = 0;

	if (!uaddr || bpf_probe_read_user(&family, sizeof(family), uaddr))
		return;
	if (family == AF_INET) {
		struct sockaddr_in sin;

		if (bpf_probe_read_user(&sin, sizeof(sin), uaddr))
			return;
		e->rport = bpf_ntohs(sin.sin_port);
		__builtin_memset(e->raddr, 0, sizeof(e->raddr));
		__builtin_memcpy(e->raddr, &sin.sin_addr, 4);
	} else if (family == AF_INET6) {
		struct sockaddr_in6 sin6;

		if (bpf_probe_read_user(&sin6, sizeof(sin6), uaddr))
			return;
		e->rport = bpf_ntohs(sin6.sin6_port);
		__builtin_memcpy(e->raddr, &sin6.sin6_addr, 16);
	}
}

/* A UDP datagram (or a DNS message over TCP) of @len bytes at user @buf, to or from the peer at
 * @uaddr (or the connected peer): reported once per flow and interval, and always with its
 * payload on port 53. */
static __always_inline void datagram(struct sock *sk, __u32 op, const void *uaddr, const void *buf,
				     long len)
{
	struct net_record *r = net_scratch_get(SCRATCH_SYSCALL);

	if (!r)
		return;
	fill_sock(&r->ev, sk);
	read_sockaddr(&r->ev, uaddr);
	if (op == NET_UDP_SEND)
		r->ev.bytes_sent = len;
	else
		r->ev.bytes_received = len;
	bool dns = r->ev.rport == DNS_PORT || r->ev.lport == DNS_PORT;

	if (!dns) {
		struct flow_key key = {
			.tgid = bpf_get_current_pid_tgid() >> 32,
			.op = op, .lport = r->ev.lport, .rport = r->ev.rport, .netns = r->ev.netns,
		};
		__u64 now = bpf_ktime_get_boot_ns(), *last;

		__builtin_memcpy(key.raddr, r->ev.raddr, 16);
		last = bpf_map_lookup_elem(&flows, &key);
		if (last && now - *last < flow_interval_ns)
			return;
		bpf_map_update_elem(&flows, &key, &now, BPF_ANY);
	} else if (buf && len > 0) {
		__u32 n = len;

		if (n > NET_PAYLOAD_MAX) {
			n = NET_PAYLOAD_MAX;
			r->ev.flags |= NET_PAYLOAD_CUT;
		}
		barrier_var(n); /* else clang passes the unclamped len, which the verifier refuses */
		n &= 2 * NET_PAYLOAD_MAX - 1;
		if (!bpf_probe_read_user(r->payload, n, buf))
			r->ev.payload_len = n;
	}
	send_current(r, op);
}

/* The first iovec and the peer of a struct msghdr in user memory. */
static __always_inline void msg_parts(const struct user_msghdr *umsg, const void **name, const void **base)
{
	struct user_msghdr msg;
	struct iovec iov;

	*name = *base = NULL;
	if (bpf_probe_read_user(&msg, sizeof(msg), umsg))
		return;
	*name = msg.msg_name;
	if (msg.msg_iovlen && !bpf_probe_read_user(&iov, sizeof(iov), msg.msg_iov))
		*base = iov.iov_base;
}

static __always_inline bool net_call(__u32 nr)
{
	return nr == nr_accept || nr == nr_accept4 || nr == nr_bind || nr == nr_listen || nr == nr_sendto ||
	       nr == nr_sendmsg || nr == nr_sendmmsg || nr == nr_recvfrom || nr == nr_recvmsg;
}

static __always_inline int net_on_enter(struct pt_regs *regs, long id)
{
	__u32 nr = id;

	if (!net_call(nr))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (ignored(pid_tgid >> 32))
		return 0;
	if (nr != nr_accept && nr != nr_accept4 && nr != nr_bind && nr != nr_listen) {
		/* datagrams, and DNS over TCP: keep other TCP send/recv traffic off the calls map */
		struct sock *sk = fd_sock((int)syscall_arg(regs, 0));

		if (!sk || !(BPF_CORE_READ(sk, sk_protocol) == IPPROTO_UDP || tcp_dns(sk)))
			return 0;
	}
	struct call c = { .nr = nr };
	__u32 tid = (__u32)pid_tgid;
	int i;

	for (i = 0; i < 6; i++)
		c.args[i] = syscall_arg(regs, i);
	bpf_map_update_elem(&calls, &tid, &c, BPF_ANY);
	return 0;
}

static __always_inline int net_on_exit(__u32 exit_nr, long ret)
{
	if (!net_call(exit_nr))
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &tid);
	struct net_record *r;
	struct sock *sk;

	if (!c)
		return 0;
	__u32 nr = c->nr;
	struct call args = *c;

	bpf_map_delete_elem(&calls, &tid);
	if (ret < 0)
		return 0;
	if (nr == nr_accept || nr == nr_accept4) {
		sk = fd_sock(ret);
		if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || !(r = net_scratch_get(SCRATCH_SYSCALL)))
			return 0;
		fill_sock(&r->ev, sk);
		remember(sk, true, r->ev.lport);
		send_current(r, NET_ACCEPT);
		return 0;
	}
	sk = fd_sock((int)args.args[0]);
	if (!sk)
		return 0;
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);

	if (nr == nr_bind || nr == nr_listen) {
		if (!(r = net_scratch_get(SCRATCH_SYSCALL)))
			return 0;
		fill_sock(&r->ev, sk);
		send_current(r, nr == nr_bind ? NET_BIND : NET_LISTEN);
		return 0;
	}
	if (proto != IPPROTO_UDP && !tcp_dns(sk))
		return 0;
	const void *name, *base;

	if (nr == nr_sendto || nr == nr_recvfrom) {
		datagram(sk, nr == nr_sendto ? NET_UDP_SEND : NET_UDP_RECV, (const void *)args.args[4],
			 (const void *)args.args[1], ret);
	} else if (nr == nr_sendmsg || nr == nr_recvmsg) {
		msg_parts((const struct user_msghdr *)args.args[1], &name, &base);
		datagram(sk, nr == nr_sendmsg ? NET_UDP_SEND : NET_UDP_RECV, name, base, ret);
	} else if (nr == nr_sendmmsg && ret > 0) { /* the first message stands for the batch */
		msg_parts((const struct user_msghdr *)args.args[1], &name, &base);
		__u32 len = 0;

		bpf_probe_read_user(&len, sizeof(len), &((struct mmsghdr *)args.args[1])->msg_len);
		datagram(sk, NET_UDP_SEND, name, base, len);
	}
	return 0;
}
