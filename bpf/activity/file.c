// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * File activity from the raw sys_enter/sys_exit tracepoints (no kprobes, fentry or LSM on our
 * kernels) through activity.bpf.c's pair, steered by the file_calls table user space fills; not
 * per-syscall tracepoints: measured here, 51 of those took 2.9 s to load and 3.8 s to detach.
 * Calls that name a path are recorded at entry, where the caller's cwd or dirfd still resolves
 * the name, and sent at exit only when they succeeded. Calls on an fd take the path from the
 * open file's dentries. Writes are folded per file and process in the kernel.
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

#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define S_IFMT 0170000
#define S_IFREG 0100000
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define FMODE_CREATED 0x100000 /* open created the file (since 4.19; same bit through 6.18) */

/* The ring buffer of file records */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} file_events SEC(".maps");

/* A response policy blocks files (blocked_exec, the process object's map): an open for reading
 * of one marked BLOCK_OPEN (a script) kills the opener. On when the policy lists any, whether or not file events are on. */
const volatile bool block_on = false;

/* One write record per file and process per interval at most. */
const volatile __u64 write_interval_ns = 1000000000;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYSCALL_NR_MAX);
	__type(key, __u32);
	__type(value, struct file_call);
} file_calls SEC(".maps");

/* Watched and excluded path prefixes: the longest match decides. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_key);
	__type(value, __u8);
} prefixes SEC(".maps");

struct file_record {
	struct file_event ev;
	char data[2 * FILE_PATH_MAX];
};

/* Records are built here (too large for the stack); the slack past the two path slots lets
 * the verifier prove every masked write stays inside. */
struct file_scratch {
	struct file_record rec;
	char slack[FILE_PATH_MAX];
	char walk[2 * FILE_PATH_MAX]; /* path_string's buffer */
	struct prefix_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_scratch);
} file_scratch SEC(".maps");

/* Path calls between entry and exit (tid -> record): sent if the call succeeded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct file_record);
} pending SEC(".maps");

struct write_key {
	__u64 file; /* struct file *: one per open, shared by dup'ed fds */
	__u32 tgid;
	__u32 _pad;
};

struct write_state {
	__u64 inode; /* tells a reused struct file address from the one this entry is about */
	__u64 last_ns;
	__u64 count;
	__u64 bytes;
	__u32 watched;
	__u32 _pad;
};

/* Per open file and writer: whether it is watched, and the writes not yet reported. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct write_key);
	__type(value, struct write_state);
} writes SEC(".maps");

static __always_inline struct file_scratch *file_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&file_scratch, &zero);
}

static __always_inline bool watched(struct file_scratch *s, const char *path)
{
	__u8 *kind;

	s->key.prefixlen = PREFIX_MAX * 8;
	bpf_probe_read_kernel(s->key.path, PREFIX_MAX, path);
	kind = bpf_map_lookup_elem(&prefixes, &s->key);
	return kind && *kind == PREFIX_WATCH;
}

/* The file's path into data slot @slot (0 or FILE_PATH_MAX); returns its length, NUL included. */
static __always_inline __u32 file_path(struct file_scratch *s, struct file *f, __u32 slot,
				       bool *truncated)
{
	struct path p = BPF_CORE_READ(f, f_path);
	__u32 pos = path_string(&p, s->walk, truncated);
	__u32 len = FILE_PATH_MAX - pos;

	bpf_probe_read_kernel(&s->rec.data[slot & FILE_PATH_MAX], len & (FILE_PATH_MAX - 1),
			      &s->walk[pos & (FILE_PATH_MAX - 1)]);
	return len & (FILE_PATH_MAX - 1);
}

/* The absolute form of the caller's path @upath (relative to @dirfd or the cwd) into data slot
 * @slot; returns its length, NUL included, or 0 when it cannot be read. */
static __always_inline __u32 user_path(struct file_scratch *s, struct task_struct *task, long dirfd,
				       const char *upath, __u32 slot, bool *truncated)
{
	char *dst = &s->rec.data[slot & FILE_PATH_MAX];
	__u32 n = 0;
	char first = 0;
	long m;

	*truncated = false;
	if (bpf_probe_read_user(&first, 1, upath))
		return 0;
	if (first != '/') {
		struct path base;

		if (dirfd == AT_FDCWD) {
			base = BPF_CORE_READ(task, fs, pwd);
		} else {
			struct file *f = fd_file(dirfd);

			if (!f)
				return 0;
			base = BPF_CORE_READ(f, f_path);
		}
		__u32 pos = path_string(&base, s->walk, truncated);

		n = (FILE_PATH_MAX - 1 - pos) & (FILE_PATH_MAX - 1);
		bpf_probe_read_kernel(dst, n, &s->walk[pos & (FILE_PATH_MAX - 1)]);
		if (first && n != 1) /* "" names the dirfd itself (AT_EMPTY_PATH) */
			dst[n++ & (FILE_PATH_MAX - 1)] = '/';
	}
	n &= FILE_PATH_MAX - 1;
	m = bpf_probe_read_user_str(&dst[n], FILE_PATH_MAX - n, upath);
	if (m <= 0)
		return 0;
	if (n + m == FILE_PATH_MAX)
		*truncated = true;
	return (n + m) & (FILE_PATH_MAX - 1);
}

static __always_inline void fill_inode(struct file_event *e, struct inode *inode)
{
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->mode = BPF_CORE_READ(inode, i_mode);
	e->uid = BPF_CORE_READ(inode, i_uid.val);
	e->gid = BPF_CORE_READ(inode, i_gid.val);
	e->flags |= FILE_HAS_INODE;
}

static __always_inline void mark_written(struct inode *inode)
{
	struct file_key key = {
		.dev = BPF_CORE_READ(inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(inode, i_ino),
	};
	__u64 now = bpf_ktime_get_boot_ns();

	bpf_map_update_elem(&written, &key, &now, BPF_ANY);
}

static __always_inline struct file_event *begin(struct file_scratch *s, __u32 op,
						 struct task_struct *task)
{
	struct file_event *e = &s->rec.ev;

	e->start_ns = task_start_ns(task);
	e->dev = e->ino = e->count = e->bytes = 0;
	e->op = op;
	e->flags = 0;
	e->mode = 0;
	e->uid = e->gid = -1;
	e->path_len = e->path2_len = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

static __always_inline __u64 record_size(struct file_event *e)
{
	__u64 size = e->path2_len ? FILE_PATH_MAX + e->path2_len : e->path_len;

	barrier_var(size);
	if (size > 2 * FILE_PATH_MAX)
		size = 2 * FILE_PATH_MAX;
	return sizeof(*e) + size;
}

static __always_inline void file_send(struct file_record *r, struct task_struct *task)
{
	__u64 size = record_size(&r->ev);

	fill_header(&r->ev.hdr, EVENT_FILE, size, task);
	if (output_retry(&file_events, r, size, 0))
		count_lost(EVENT_FILE);
}

/* A record about open file @f, sent at once. */
static __always_inline void send_fd_event(struct file_scratch *s, struct task_struct *task,
					  struct file *f, __u32 op, __u32 flags)
{
	struct file_event *e = begin(s, op, task);
	bool truncated;

	fill_inode(e, BPF_CORE_READ(f, f_inode));
	e->flags |= flags;
	e->path_len = file_path(s, f, 0, &truncated);
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	if (e->path_len && watched(s, s->rec.data))
		file_send(&s->rec, task);
}

/* ---- blocked files: a script's interpreter dies opening it ---- */

/* Every way to run a script ends in a process opening it by one of the open calls before reading
 * a line: the interpreter the kernel starts for `./tool` (it hands it the script's path), `sh
 * tool`, `python3 tool.py`, or `cat tool | sh`. SIGKILL at the open's exit is delivered before the
 * call returns to user space, so not a byte of the file is read. sched_process_exec cannot do it:
 * for a script it sees the interpreter's inode, and only the script's path as a string. Any
 * reader but the sensor and pid 1 is killed: nothing in the kernel tells running from reading.
 * The record goes to the process ring (`events`, shared), after the opener's exec record. */
static __always_inline void deny_open(struct file *f)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	struct file_key key = {
		.dev = BPF_CORE_READ(inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(inode, i_ino),
	};
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct file_scratch *s;
	bool truncated;

	/* O_PATH and write-only opens read nothing (FMODE_PATH files have no FMODE_READ) */
	if (!(BPF_CORE_READ(f, f_mode) & FMODE_READ))
		return;
	__u8 *how = bpf_map_lookup_elem(&blocked_exec, &key);

	if (!how || !(*how & BLOCK_OPEN))
		return;
	if (tgid == 1 || ignored(tgid))
		return;
	bpf_send_signal(9);
	s = file_scratch_get();
	if (!s) {
		count_lost(EVENT_BLOCKED);
		return;
	}
	struct file_event *e = begin(s, 0, task);

	fill_inode(e, inode);
	e->path_len = file_path(s, f, 0, &truncated);
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	__u64 size = record_size(e);

	fill_header(&e->hdr, EVENT_BLOCKED, size, task);
	if (output_retry(&events, &s->rec, size, 0)) /* rare, and urgent: wake the reader */
		count_lost(EVENT_BLOCKED);
}

/* ---- open and create: at exit, from the new fd's struct file ---- */

/* @announce: a create is reported (not when a write finds a file it has not seen open) */
static __always_inline int opened_file(struct file *f, bool announce)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file_scratch *s;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ignored(tgid))
		return 0;
	__u32 fmode = BPF_CORE_READ(f, f_mode);
	struct inode *inode = BPF_CORE_READ(f, f_inode);

	if (!(fmode & FMODE_WRITE) || (BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFREG)
		return 0;
	mark_written(inode);
	s = file_scratch_get();
	if (!s)
		return 0;
	bool truncated;
	__u32 len = file_path(s, f, 0, &truncated);
	struct write_key key = { .file = (__u64)f, .tgid = tgid };
	struct write_state st = { .inode = (__u64)inode, .watched = len && watched(s, s->rec.data) };

	bpf_map_update_elem(&writes, &key, &st, BPF_ANY);
	if (announce && st.watched && (fmode & FMODE_CREATED))
		send_fd_event(s, task, f, FILE_CREATE, 0);
	return 0;
}

static __always_inline int opened(long fd, bool announce)
{
	struct file *f = fd < 0 ? NULL : fd_file(fd);

	return f ? opened_file(f, announce) : 0;
}

/* ---- writes: counted per open file and process, reported once per interval ---- */

static __always_inline int wrote(long fd, __u64 bytes)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (void *)bpf_get_current_task();
	struct write_key key = { .tgid = id >> 32 };
	struct write_state *st;
	struct file *f;

	f = fd_file(fd);
	if (!f)
		return 0;
	key.file = (__u64)f;
	struct inode *inode = BPF_CORE_READ(f, f_inode);

	st = bpf_map_lookup_elem(&writes, &key);
	if (!st || st->inode != (__u64)inode) {
		/* opened before the sensor started, inherited, or a new file at a reused address */
		if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFREG)
			return 0;
		opened(fd, false);
		st = bpf_map_lookup_elem(&writes, &key);
		if (!st)
			return 0;
	}
	if (!st->watched)
		return 0;
	__sync_fetch_and_add(&st->count, 1);
	__sync_fetch_and_add(&st->bytes, bytes);
	__u64 now = bpf_ktime_get_boot_ns();

	if (now - st->last_ns < write_interval_ns)
		return 0;
	struct file_scratch *s = file_scratch_get();

	if (!s)
		return 0;
	st->last_ns = now;
	mark_written(inode);
	struct file_event *e = begin(s, FILE_WRITE, task);

	e->count = __sync_lock_test_and_set(&st->count, 0);
	e->bytes = __sync_lock_test_and_set(&st->bytes, 0);
	bool truncated;

	fill_inode(e, inode);
	e->path_len = file_path(s, f, 0, &truncated);
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	file_send(&s->rec, task);
	return 0;
}

/* The writes not yet reported go out at close, so none is left uncounted. The entry stays: the
 * file may be open through another fd (dup2 then close, as shells redirect), and the LRU map
 * forgets it in time. */
static __always_inline int closed(long fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct write_key key = { .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct write_state *st;
	struct file_scratch *s;
	struct file *f = fd_file(fd);

	if (!f)
		return 0;
	key.file = (__u64)f;
	st = bpf_map_lookup_elem(&writes, &key);
	if (!st || !st->watched || !st->count || st->inode != (__u64)BPF_CORE_READ(f, f_inode))
		return 0;
	s = file_scratch_get();
	if (!s)
		return 0;
	struct file_event *e = begin(s, FILE_WRITE, task);
	bool truncated;

	e->count = __sync_lock_test_and_set(&st->count, 0);
	e->bytes = __sync_lock_test_and_set(&st->bytes, 0);
	e->flags |= FILE_AT_CLOSE;
	fill_inode(e, BPF_CORE_READ(f, f_inode));
	e->path_len = file_path(s, f, 0, &truncated);
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	file_send(&s->rec, task);
	return 0;
}

/* ---- calls on an fd: sent at entry ---- */

static __always_inline int fd_call(long fd, __u32 op, __u32 mode, __u32 uid, __u32 gid)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file_scratch *s;
	struct file *f;

	f = fd_file(fd);
	s = file_scratch_get();
	if (!f || !s)
		return 0;
	struct file_event *e = begin(s, op, task);
	bool truncated;

	fill_inode(e, BPF_CORE_READ(f, f_inode));
	if (op == FILE_CHMOD)
		e->mode = (e->mode & S_IFMT) | (mode & 07777);
	if (op == FILE_CHOWN) {
		e->uid = uid;
		e->gid = gid;
	}
	e->path_len = file_path(s, f, 0, &truncated);
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	if (e->path_len && watched(s, s->rec.data))
		file_send(&s->rec, task);
	return 0;
}

/* ---- calls that name paths: built at entry, sent at exit if they succeeded ---- */

/* @path2 is a second name (rename's and link's old name, resolved like the first; symlink's
 * target, kept exactly as given when @raw2). */
static __always_inline int path_call(__u32 op, long dirfd, const char *upath, long dirfd2,
				     const char *upath2, bool raw2, __u32 mode, __u32 uid, __u32 gid)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file_scratch *s;
	bool truncated, hit;

	s = file_scratch_get();
	if (!s)
		return 0;
	struct file_event *e = begin(s, op, task);

	e->mode = mode;
	e->uid = uid;
	e->gid = gid;
	e->path_len = user_path(s, task, dirfd, upath, 0, &truncated);
	if (!e->path_len)
		return 0;
	if (truncated)
		e->flags |= FILE_PATH_TRUNCATED;
	hit = watched(s, s->rec.data);
	if (upath2) {
		if (raw2) {
			long m = bpf_probe_read_user_str(&s->rec.data[FILE_PATH_MAX], FILE_PATH_MAX, upath2);

			e->path2_len = m > 0 ? m : 0;
			truncated = m == FILE_PATH_MAX;
		} else {
			e->path2_len = user_path(s, task, dirfd2, upath2, FILE_PATH_MAX, &truncated);
			hit = hit || (e->path2_len && watched(s, &s->rec.data[FILE_PATH_MAX]));
		}
		if (truncated)
			e->flags |= FILE_PATH2_TRUNCATED;
	}
	if (!hit)
		return 0;
	__u32 tid = (__u32)id;

	bpf_map_update_elem(&pending, &tid, &s->rec, BPF_ANY);
	return 0;
}

static __always_inline int path_call_done(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct file_record *r = bpf_map_lookup_elem(&pending, &tid);

	if (!r)
		return 0;
	if (ret == 0)
		file_send(r, (void *)bpf_get_current_task());
	bpf_map_delete_elem(&pending, &tid);
	return 0;
}

/* ---- entry and exit, called by activity.bpf.c's two programs ---- */

static __always_inline int fd_arg(struct pt_regs *regs, __u8 i)
{
	return (int)syscall_arg(regs, i); /* a C int: the register's upper half is not sign-extended */
}

static __always_inline int dirfd_arg(struct pt_regs *regs, __u8 i)
{
	return i == FC_NONE ? AT_FDCWD : fd_arg(regs, i);
}

static __always_inline int file_on_enter(struct pt_regs *regs, long id)
{
	__u32 nr = id;
	struct file_call *c = bpf_map_lookup_elem(&file_calls, &nr);

	if (!c || !c->kind || c->kind == FC_OPEN || ignored(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (c->kind == FC_WRITE)
		return wrote(fd_arg(regs, c->path), c->bytes == FC_NONE ? 0 : syscall_arg(regs, c->bytes));
	if (c->kind == FC_CLOSE)
		return closed(fd_arg(regs, c->path));
	__u32 mode = c->mode == FC_NONE ? 0 : syscall_arg(regs, c->mode);
	__u32 uid = c->owner == FC_NONE ? -1 : syscall_arg(regs, c->owner);
	__u32 gid = c->owner == FC_NONE ? -1 : syscall_arg(regs, c->owner + 1);

	if (c->kind == FC_FD)
		return fd_call(fd_arg(regs, c->path), c->op, mode, uid, gid);
	if (c->kind != FC_PATH)
		return 0;
	__u32 op = c->op;

	if (op == FILE_DELETE && c->flags != FC_NONE && (syscall_arg(regs, c->flags) & AT_REMOVEDIR))
		op = FILE_RMDIR;
	return path_call(op, dirfd_arg(regs, c->dirfd), (const char *)syscall_arg(regs, c->path),
			 dirfd_arg(regs, c->dirfd2),
			 c->path2 == FC_NONE ? NULL : (const char *)syscall_arg(regs, c->path2), c->raw2,
			 mode, uid, gid);
}

static __always_inline int file_on_exit(__u32 nr, long ret)
{
	struct file_call *c = bpf_map_lookup_elem(&file_calls, &nr);

	if (!c)
		return 0;
	if (c->kind == FC_OPEN) {
		struct file *f = ret < 0 ? NULL : fd_file(ret);

		if (!f)
			return 0;
		if (block_on)
			deny_open(f);
		return file_on ? opened_file(f, true) : 0;
	}
	if (file_on && c->kind == FC_PATH)
		return path_call_done(ret);
	return 0;
}
