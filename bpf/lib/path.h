/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Absolute paths from a struct path without bpf_d_path (which needs fentry/LSM programs our
 * kernels refuse): walk d_parent up to the mount root, then hop to the mountpoint in the parent
 * mount, as Tracee and Falco's modern probe do. Names are written leaf first, each
 * NUL-terminated; user space reverses them.
 */
#ifndef __SENSOR_PATH_H
#define __SENSOR_PATH_H

#include "../sensor.h"

/* Writes the components of @path into @buf at *@off (masked into [0, EXEC_DATA_MAX)); @buf
 * must have NAME_MAX_LEN bytes of slack past EXEC_DATA_MAX. Returns the bytes written and sets
 * *@truncated when the walk hit PATH_DEPTH_MAX or the buffer end. */
static __always_inline __u32 read_path(const struct path *path, char *buf, __u32 *off,
				       bool *truncated)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct dentry *dentry = BPF_CORE_READ(path, dentry);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	__u32 start = *off, pos = *off;
	int i;

	/* A file that is its own parent without being a mount's root is a pseudo file (memfd,
	 * anon inode): its name is all the path it has, as /proc/PID/exe shows ("/memfd:x"). */
	if (dentry == BPF_CORE_READ(dentry, d_parent) && dentry != BPF_CORE_READ(vfsmnt, mnt_root)) {
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

		if (dentry == mnt_root || dentry == parent) {
			struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

			/* the root of an unmounted tree or of the global root mount */
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

#endif /* __SENSOR_PATH_H */
