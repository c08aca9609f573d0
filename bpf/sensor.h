/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The wire contract between the kernel programs and user space.
 *
 * Every record in a ring buffer starts with struct event_header. Python mirrors these structs
 * in sensor/wire.py, and tests/test_wire.py checks sizes and offsets against the BTF of the
 * compiled objects, so a change here that is not made there fails the tests.
 * Fields are ordered largest first and padded explicitly: no implicit holes.
 */
#ifndef __SENSOR_H
#define __SENSOR_H

#define TASK_COMM_LEN 16

/* Exec record payload bounds. The variable part (data[]) holds, in order: the argv block
 * (NUL-separated, as the kernel keeps it), the filename passed to execve, then the paths of
 * the executable and of the cwd as dentry names leaf first, each NUL-terminated (user space
 * reverses them). */
#define ARGS_MAX 8192
#define FILENAME_MAX_LEN 512
#define NAME_MAX_LEN 256
#define PATH_DEPTH_MAX 32
#define EXEC_DATA_MAX 16384 /* power of two: offsets are masked with EXEC_DATA_MAX - 1 */

enum event_type {
	EVENT_EXEC = 1,
	EVENT_FORK = 2,
	EVENT_EXIT = 3,
};

/* exec_event.flags and fork_event.flags */
enum event_flags {
	FLAG_ARGS_TRUNCATED = 1 << 0,
	FLAG_FILENAME_TRUNCATED = 1 << 1,
	FLAG_EXE_TRUNCATED = 1 << 2,
	FLAG_CWD_TRUNCATED = 1 << 3,
	FLAG_THREAD = 1 << 4,     /* fork created a thread (CLONE_THREAD), not a process */
	FLAG_DATA_FULL = 1 << 5,  /* data[] ran out of room: later parts are missing */
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

#endif /* __SENSOR_H */
