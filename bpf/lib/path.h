/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Absolute paths from a struct path without bpf_d_path (which needs fentry/LSM programs our
 * kernels refuse): walk d_parent up to the mount root, then hop to the mountpoint in the parent
 * mount, as Tracee and Falco's modern probe do.
 */
#ifndef __SENSOR_PATH_H
#define __SENSOR_PATH_H

#include "../sensor.h"

/* A file that is its own parent without being a mount's root is a pseudo file (memfd, anon
 * inode): its name is all the path it has, as /proc/PID/exe shows ("/memfd:x"). */
static __always_inline bool pseudo_file(struct dentry *dentry, struct vfsmount *vfsmnt)
{
	return dentry == BPF_CORE_READ(dentry, d_parent) && dentry != BPF_CORE_READ(vfsmnt, mnt_root);
}

enum { STEP_NAME, STEP_MOUNT, STEP_ROOT };

/* One step of a walk toward the root. STEP_NAME: *@dentry is a component to record before moving
 * to @parent; STEP_MOUNT: a mount's root, so the walk hopped to its mountpoint in the parent
 * mount; STEP_ROOT: the root of the global root mount or of an unmounted tree. */
static __always_inline int step_up(struct dentry **dentry, struct mount **mnt,
				   struct vfsmount **vfsmnt, struct dentry *parent)
{
	struct dentry *mnt_root = BPF_CORE_READ(*vfsmnt, mnt_root);
	struct mount *mnt_parent;

	if (*dentry != mnt_root && *dentry != parent)
		return STEP_NAME;
	mnt_parent = BPF_CORE_READ(*mnt, mnt_parent);
	if (*dentry != mnt_root || *mnt == mnt_parent)
		return STEP_ROOT;
	*dentry = BPF_CORE_READ(*mnt, mnt_mountpoint);
	*mnt = mnt_parent;
	*vfsmnt = &mnt_parent->mnt;
	return STEP_MOUNT;
}

/* Writes the components of @path into @buf at *@off (masked into [0, EXEC_DATA_MAX)), leaf
 * first, each NUL-terminated (user space reverses them); @buf must have NAME_MAX_LEN bytes of
 * slack past EXEC_DATA_MAX. Returns the bytes written and sets *@truncated when the walk hit
 * PATH_DEPTH_MAX or the buffer end. */
static __always_inline __u32 read_path(const struct path *path, char *buf, __u32 *off,
				       bool *truncated)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct dentry *dentry = BPF_CORE_READ(path, dentry);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	__u32 start = *off, pos = *off;
	int i;

	if (pseudo_file(dentry, vfsmnt)) {
		long n = bpf_probe_read_kernel_str(&buf[pos & (EXEC_DATA_MAX - 1)], NAME_MAX_LEN,
						   BPF_CORE_READ(dentry, d_name.name));
		*truncated = false;
		if (n > 0)
			*off = pos + n;
		return *off - start;
	}
	*truncated = true;
	for (i = 0; i < PATH_DEPTH_MAX; i++) {
		struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

		/* step_up() spelled out: through pointers to these locals the verifier could no longer
		 * prune this loop's states (exec records went over its complexity limit) */
		if (dentry == mnt_root || dentry == parent) {
			struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

			if (dentry != mnt_root || mnt == mnt_parent) {
				*truncated = false;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = &mnt->mnt;
			continue;
		}
		if (pos > EXEC_DATA_MAX - NAME_MAX_LEN)
			break;
		const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
		long n = bpf_probe_read_kernel_str(&buf[pos & (EXEC_DATA_MAX - 1)], NAME_MAX_LEN,
						   name);
		if (n <= 0)
			break;
		/* The mask changes no value (pos stays below EXEC_DATA_MAX) but keeps pos in one
		 * range on every iteration, so the verifier can prune loop states. */
		pos = (pos + n) & (2 * EXEC_DATA_MAX - 1);
		dentry = parent;
	}
	*off = pos;
	return pos - start;
}

/* The same walk, writing the path root first as one string that ends with its NUL at
 * @buf[FILE_PATH_MAX - 1] (@buf has 2 * FILE_PATH_MAX bytes); returns where it starts. A
 * walk cut at FILE_DEPTH_MAX components or FILE_PATH_MAX bytes sets *@truncated and keeps
 * the components nearest the leaf. */
static __always_inline __u32 path_string(const struct path *path, char *buf, bool *truncated)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct dentry *dentry = BPF_CORE_READ(path, dentry);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	__u32 pos = FILE_PATH_MAX - 1;
	int i;

	buf[FILE_PATH_MAX - 1] = 0;
	*truncated = false;
	if (pseudo_file(dentry, vfsmnt)) {
		struct qstr name = BPF_CORE_READ(dentry, d_name);
		__u32 len = name.len & (NAME_MAX_LEN - 1);

		pos -= len + 1;
		bpf_probe_read_kernel(&buf[(pos + 1) & (FILE_PATH_MAX - 1)], len, name.name);
		buf[pos & (FILE_PATH_MAX - 1)] = '/';
		return pos;
	}
	*truncated = true;
	for (i = 0; i < FILE_DEPTH_MAX; i++) {
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		int step = step_up(&dentry, &mnt, &vfsmnt, parent);

		if (step == STEP_ROOT) {
			*truncated = false;
			break;
		}
		if (step == STEP_MOUNT)
			continue;
		struct qstr name = BPF_CORE_READ(dentry, d_name);
		__u32 len = name.len & (NAME_MAX_LEN - 1);

		if (len + 1 >= pos) /* leaves pos >= 1: the string is never empty */
			break;
		/* masked like read_path's pos: same value, one range per iteration */
		pos = (pos - len - 1) & (FILE_PATH_MAX - 1);
		bpf_probe_read_kernel(&buf[(pos + 1) & (FILE_PATH_MAX - 1)], len, name.name);
		buf[pos & (FILE_PATH_MAX - 1)] = '/';
		dentry = parent;
	}
	if (pos == FILE_PATH_MAX - 1) { /* the root itself */
		pos--;
		buf[pos] = '/';
	}
	return pos;
}

#endif /* __SENSOR_PATH_H */
