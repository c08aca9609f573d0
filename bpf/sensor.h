/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The wire contract between the kernel programs and user space.
 *
 * Every record in a ring buffer starts with struct event_header. Python mirrors these structs
 * in sensor/wire.py, and tests/test_wire.py checks sizes and offsets against the BTF of the
 * compiled objects, so a change here that is not made there fails the tests. Constants are named
 * enums, never #defines, and struct wire_enums at the end carries each enum into the BTF, where the
 * same tests compare every value with its Python name.
 * Fields are ordered largest first and padded explicitly: no implicit holes.
 */
#ifndef __SENSOR_H
#define __SENSOR_H

/* comm fields are TASK_COMM_LEN (16) bytes: the kernel's own enum, from vmlinux.h */

/* Exec record payload bounds. The variable part (data[]) holds, in order: the argv block
 * (NUL-separated, as the kernel keeps it), the filename passed to execve, then the paths of
 * the executable and of the cwd as dentry names leaf first, each NUL-terminated (user space
 * reverses them). */
enum exec_limits {
	ARGS_MAX = 8192,
	FILENAME_MAX_LEN = 512,
	NAME_MAX_LEN = 256,
	PATH_DEPTH_MAX = 32,
	EXEC_DATA_MAX = 16384, /* power of two: offsets are masked with EXEC_DATA_MAX - 1 */
};

enum event_type {
	EVENT_EXEC = 1,
	EVENT_FORK = 2,
	EVENT_EXIT = 3,
	EVENT_SYSCALL = 4,
	EVENT_TAMPER = 5,
	EVENT_FILE = 6,
	EVENT_NET = 7,
	EVENT_SECURITY = 8,
	EVENT_BLOCKED = 9, /* struct file_event: a process opened a blocked file and got SIGKILL */
};

enum tamper_kind {
	TAMPER_SIGNAL = 1,
	TAMPER_PTRACE = 2,
};

/* exec_event.flags and fork_event.flags */
enum event_flags {
	FLAG_ARGS_TRUNCATED = 1 << 0,
	FLAG_FILENAME_TRUNCATED = 1 << 1,
	FLAG_EXE_TRUNCATED = 1 << 2,
	FLAG_CWD_TRUNCATED = 1 << 3,
	FLAG_THREAD = 1 << 4,     /* fork created a thread (CLONE_THREAD), not a process */
	FLAG_DATA_FULL = 1 << 5,  /* data[] ran out of room: later parts are missing */
	FLAG_BLOCKED = 1 << 6,    /* the image was on the block list: the task got SIGKILL */
	FLAG_WRITTEN = 1 << 7,    /* the image was created or written since the sensor started */
};

/* Key of the block list: the executable's inode. dev is the kernel's encoding
 * (major << 20 | minor), which user space must convert st_dev to. */
struct file_key {
	__u64 dev;
	__u64 ino;
};

struct event_header {
	__u64 ts_ns; /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
	__u32 type;  /* enum event_type */
	__u32 size;  /* whole record, header included */
	__u32 pid;   /* tgid of the task the event is about */
	__u32 tid;
	__u32 cpu;
	__u32 _pad;
};

struct exec_event {
	struct event_header hdr;
	__u64 start_ns;        /* group leader's start_boottime: the process's entity key */
	__u64 parent_start_ns; /* real parent's group leader start_boottime */
	__u64 cgroup_id;
	__u32 ppid;       /* real_parent->tgid */
	__u32 parent_tid; /* real_parent->pid */
	__u32 old_tid;    /* the thread that called execve (differs when a non-leader execs) */
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 egid;
	__u32 loginuid;
	__u32 sessionid;
	__u32 argc;     /* bprm->argc: the original count, even when args are truncated */
	__u32 args_len; /* bytes of argv in data[] */
	__u16 filename_len;
	__u16 exe_len;
	__u16 cwd_len;
	__u16 flags;
	char comm[TASK_COMM_LEN];
	__u32 _pad2;
	char data[];
};

struct fork_event {
	struct event_header hdr; /* pid/tid: the parent */
	__u64 start_ns;          /* child's group leader start_boottime */
	__u64 parent_start_ns;
	__u32 child_pid;
	__u32 child_tid;
	__u32 flags;
	__u32 uid;
	char comm[TASK_COMM_LEN];
};

struct exit_event {
	struct event_header hdr;
	__u64 start_ns;
	__u32 ppid;
	__u32 exit_code; /* task->exit_code: (status << 8) | signal, 0x80 = core dumped */
	char comm[TASK_COMM_LEN];
};

/* Another process aimed a signal or a ptrace request at the sensor (self-protection). */
struct tamper_event {
	struct event_header hdr; /* pid/tid: the sender */
	__u32 target_pid;
	__u32 kind;    /* enum tamper_kind */
	__u32 sig;     /* signal number (TAMPER_SIGNAL) */
	__u32 request; /* ptrace request (TAMPER_PTRACE) */
	char comm[TASK_COMM_LEN];
};

/* File activity (activity/file.c). Paths are absolute and root first: built from the dentries of an
 * open file, or, for calls that name a path, from the cwd or dirfd's dentries joined with the
 * string the caller passed (not resolved further: symlinks inside it stay as named). */
enum file_limits {
	FILE_PATH_MAX = 4096, /* power of two: offsets are masked with FILE_PATH_MAX - 1 */
	FILE_DEPTH_MAX = 64,
	PREFIX_MAX = 256,     /* bytes of a path the watch/exclude prefixes are matched against */
};

enum file_op {
	FILE_CREATE = 1,
	FILE_WRITE = 2,    /* writes folded: at most one record per file, process and interval */
	FILE_DELETE = 3,
	FILE_RENAME = 4,   /* path: the new name, path2: the old */
	FILE_CHMOD = 5,
	FILE_CHOWN = 6,
	FILE_LINK = 7,     /* path: the new link, path2: the existing file */
	FILE_SYMLINK = 8,  /* path: the new link, path2: its target as given */
	FILE_TRUNCATE = 9,
	FILE_MKDIR = 10,
	FILE_RMDIR = 11,
};

enum file_flags {
	FILE_PATH_TRUNCATED = 1 << 0,
	FILE_PATH2_TRUNCATED = 1 << 1,
	FILE_AT_CLOSE = 1 << 2,   /* FILE_WRITE: the rest of the writes, reported at close */
	FILE_HAS_INODE = 1 << 3,  /* dev, ino, mode, uid and gid come from the file's inode */
};

/* file_calls[nr]: how the file programs handle syscall nr (filled by user space from its syscall
 * table, so one pair of raw sys_enter/sys_exit programs serves every architecture). Argument
 * fields are indices 0-5, or FC_NONE. */
enum file_call_kind {
	FC_OPEN = 1,  /* at exit: the returned fd */
	FC_WRITE = 2, /* at entry: arg `path` is the fd, `bytes` the count */
	FC_CLOSE = 3,
	FC_FD = 4,    /* at entry: arg `path` is the fd the op applies to */
	FC_PATH = 5,  /* at entry, sent at exit if it succeeded: `dirfd` + `path` name the file */
};

enum file_call_arg {
	FC_NONE = 0xff,
};

struct file_call {
	__u8 kind;   /* enum file_call_kind; 0: not a file call */
	__u8 op;     /* enum file_op */
	__u8 dirfd;  /* FC_NONE: relative to the cwd */
	__u8 path;
	__u8 dirfd2;
	__u8 path2;
	__u8 mode;
	__u8 owner;  /* uid; the gid is the next argument */
	__u8 flags;  /* an AT_REMOVEDIR bit here makes a delete an rmdir (unlinkat) */
	__u8 bytes;
	__u8 raw2;   /* path2 is kept as written (a symlink's target) */
	__u8 _pad[5];
};

/* Values of the `prefixes` LPM trie */
enum prefix_kind {
	PREFIX_WATCH = 1,
	PREFIX_EXCLUDE = 2,
};

struct prefix_key {
	__u32 prefixlen; /* in bits */
	char path[PREFIX_MAX];
};

struct file_event {
	struct event_header hdr;
	__u64 start_ns; /* the actor's entity key, as in exec_event */
	__u64 dev;      /* with FILE_HAS_INODE */
	__u64 ino;
	__u64 count;    /* FILE_WRITE: write calls folded into this record */
	__u64 bytes;    /* FILE_WRITE: bytes those calls asked to write */
	__u32 op;       /* enum file_op */
	__u32 flags;    /* enum file_flags */
	__u32 mode;     /* the inode's i_mode, or the mode asked for (chmod, mkdir) */
	__u32 uid;      /* the inode's owner, or the owner asked for (chown; -1: unchanged) */
	__u32 gid;
	__u16 path_len;  /* bytes at data[0], NUL included */
	__u16 path2_len; /* bytes at FILE_PATH_MAX past the path, NUL included; 0 when none */
	char comm[TASK_COMM_LEN];
	/* followed by the path, and by path2 at offset FILE_PATH_MAX of that data */
};

/* Network activity (activity/net.c): TCP from sock:inet_sock_set_state, accept/bind/listen and UDP
 * from the raw syscall tracepoints. Addresses are 16 bytes (IPv4 in the first 4), ports in host
 * order; local is this host's end, remote the peer's. */
enum net_limits {
	NET_PAYLOAD_MAX = 512, /* DNS messages over UDP fit (RFC 1035 without EDNS) */
};

enum net_op {
	NET_CONNECT = 1, /* an outbound TCP connection was established (or failed: NET_FAILED) */
	NET_ACCEPT = 2,  /* an inbound TCP connection was accepted */
	NET_CLOSE = 3,   /* a TCP connection ended: bytes and duration */
	NET_UDP_SEND = 4, /* a UDP datagram, or a DNS message over TCP (port 53) */
	NET_UDP_RECV = 5,
	NET_BIND = 6,
	NET_LISTEN = 7,
};

enum net_flags {
	NET_FAILED = 1 << 0,      /* connect: never established */
	NET_PAYLOAD_CUT = 1 << 1, /* the payload was longer than NET_PAYLOAD_MAX */
	NET_INBOUND = 1 << 2,     /* close: the connection was accepted, not connected */
};

struct net_event {
	struct event_header hdr; /* pid/tid: the owning process, as recorded at connect or accept */
	__u64 start_ns;          /* that process's entity key */
	__u64 duration_ns;       /* close: since connect or accept */
	__u64 bytes_sent;        /* close: acknowledged bytes sent; UDP: this datagram's size */
	__u64 bytes_received;
	__u32 netns;     /* network namespace inode */
	__u16 op;        /* enum net_op */
	__u16 family;    /* AF_INET or AF_INET6 */
	__u16 protocol;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u16 lport;
	__u16 rport;
	__u16 flags;     /* enum net_flags */
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 payload_len; /* bytes following the struct (UDP port 53 only) */
	__u16 _pad2[3];
	char comm[TASK_COMM_LEN];
};

/* Security-relevant syscalls (activity/security.c), steered by the security_calls table user space
 * fills: one record per call that passed the kernel's filter, at exit, with its raw arguments,
 * its return value, and up to three strings (user strings, or the path of an fd argument). */
enum sec_limits {
	SEC_STR_MAX = 512,
};

enum sec_filter {
	SEC_ANY = 0,
	SEC_PTRACE = 1, /* only requests that attach to or write into another process */
	SEC_SIGNAL = 2, /* only real signals (not 0) to another process */
	SEC_BPF = 3,    /* only commands that load or attach programs */
};

struct sec_call {
	__u8 wanted;
	__u8 filter;    /* enum sec_filter */
	__u8 str[3];    /* argument indices of user strings, or FC_NONE */
	__u8 fd_path;   /* argument index of an fd whose path goes in str[0], or FC_NONE */
	__u8 _pad[2];
};

struct sec_event {
	struct event_header hdr;
	__u64 start_ns;
	__u64 args[6];
	__s64 ret;
	__u32 nr;
	__u16 str_len[3]; /* bytes in str[i], NUL included; 0 when none */
	__u16 flags;      /* bit i: str[i] was truncated */
	char comm[TASK_COMM_LEN];
	char str[3][SEC_STR_MAX];
	__u32 _pad2;
};

/* Syscall tracing (`sensor trace`). Its ring buffer holds only syscall records, all of one size
 * per session, so they carry no event_header and user space decodes whole batches with numpy. */
enum trace_limits {
	SYSCALL_NR_MAX = 1024, /* syscall_spec entries; larger numbers are never decoded */
	TRACE_PATH_MAX = 256,
	TRACE_ADDR_MAX = 128,  /* enough for sockaddr_in6 and a sockaddr_un path */
};

enum syscall_flags {
	SC_NO_RETURN = 1 << 0,    /* exit/exit_group: emitted at entry, ret and duration are 0 */
	SC_PATH_TRUNCATED = 1 << 1,
	SC_PATH2_TRUNCATED = 1 << 2,
};

/* Values of the `traced` map. A launched command is ARMED until its execve, so the launcher's
 * own calls between fork and exec are never recorded and every trace starts at the execve. */
enum trace_state {
	TRACE_ON = 1,
	TRACE_ARMED = 2,
};

/* syscall_spec[nr]: what to keep and decode for syscall nr (filled by user space) */
enum spec_flags {
	SPEC_WANTED = 1 << 0,
	SPEC_ADDR_AT_EXIT = 1 << 1, /* the sockaddr is an output (accept, recvfrom, getpeername) */
};

enum spec_arg {
	SPEC_ARG_NONE = 0xff,
};

struct syscall_spec {
	__u8 flags;
	__u8 path_arg;   /* index of a path argument, or SPEC_ARG_NONE */
	__u8 path2_arg;  /* second path (rename, link, ...) */
	__u8 addr_arg;   /* index of a struct sockaddr * argument */
	__u8 addrlen_arg; /* its length: a value, or (SPEC_ADDR_AT_EXIT) a pointer to one */
	__u8 _pad[3];
};

struct syscall_event {
	__u64 enter_ns; /* CLOCK_BOOTTIME at entry */
	__u64 duration_ns;
	__s64 ret;
	__u32 pid;
	__u32 tid;
	__u32 nr;
	__u32 flags; /* enum syscall_flags */
};

/* With --args: the raw arguments and the decoded strings, in fixed slots. */
struct syscall_args_event {
	struct syscall_event sc;
	__u64 args[6];
	__u16 path_len; /* bytes in path[], NUL included; 0 when none */
	__u16 path2_len;
	__u16 addr_len;
	__u16 _pad;
	char path[TRACE_PATH_MAX];
	char path2[TRACE_PATH_MAX];
	__u8 addr[TRACE_ADDR_MAX];
};

/* Records wait in a per-CPU batch and reach the ring buffer together: one reservation, whose
 * lock every CPU shares, per batch instead of per call (measured: two getppid storms on two CPUs
 * ran 0.55 us a call batched, 0.63 to 0.78 us with a reservation each). A batch is sent when
 * full and whenever its CPU switches tasks, so a thread's records reach the ring in order even
 * when it moves between CPUs; user space reads what is left once the programs are detached.
 * A ring record is then n consecutive records of one kind, n from 1 to the batch size. */
enum trace_batch_limits {
	TRACE_BATCH = 64,          /* struct syscall_event records */
	TRACE_BATCH_ARGS = 16,     /* struct syscall_args_event records (--args) */
	TRACE_BATCH_BYTES = 11776,
};

struct trace_batch {
	__u32 n;
	__u32 _pad;
	__u8 recs[TRACE_BATCH_BYTES];
};

_Static_assert(TRACE_BATCH_BYTES == TRACE_BATCH_ARGS * sizeof(struct syscall_args_event) &&
	       TRACE_BATCH_BYTES >= TRACE_BATCH * sizeof(struct syscall_event), "trace batch size");

/* A batch the ring refused waits in a queue all CPUs share (trace.bpf.c's `held`), in order,
 * and goes to the ring before any newer batch; a record is lost only when the queue is full.
 * User space reads what still waits there after detach. */
enum trace_held_limits {
	TRACE_HELD = 256, /* queue slots: a power of two */
};

struct trace_held {
	__u64 turn; /* 2 * lap: free for the batch of lap (position / TRACE_HELD); + 1: holds it */
	struct trace_batch batch;
};

/* Every enum above, typed once. clang writes into BTF only the types a variable or function uses;
 * this unused pointer (libbpf-tools' and cilium's way of exporting types) brings them all there,
 * where tests/test_wire.py compares each value with sensor/wire.py. 8 bytes of .rodata. */
/* What the kernel stops for a file on the block list (its blocked_exec value): an exec of it,
 * and for anything but an ELF binary (a script) every open of it for reading too, which is how
 * its interpreter reads it. A binary stays readable (hashing, backups, package checks). */
enum block_how {
	BLOCK_EXEC = 1,
	BLOCK_OPEN = 2,
};

struct wire_enums {
	enum exec_limits exec_limits;
	enum event_type event_type;
	enum tamper_kind tamper_kind;
	enum event_flags event_flags;
	enum file_limits file_limits;
	enum file_op file_op;
	enum file_flags file_flags;
	enum file_call_kind file_call_kind;
	enum file_call_arg file_call_arg;
	enum prefix_kind prefix_kind;
	enum net_limits net_limits;
	enum net_op net_op;
	enum net_flags net_flags;
	enum sec_limits sec_limits;
	enum sec_filter sec_filter;
	enum trace_limits trace_limits;
	enum syscall_flags syscall_flags;
	enum trace_state trace_state;
	enum spec_flags spec_flags;
	enum spec_arg spec_arg;
	enum trace_batch_limits trace_batch_limits;
	enum trace_held_limits trace_held_limits;
	enum block_how block_how;
};
const struct wire_enums *const volatile wire_enums = 0;

#endif /* __SENSOR_H */
