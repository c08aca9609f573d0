/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Maps that several objects share (user space hands one object's map to another): their
 * definitions must be identical, so they live here once. */
#ifndef __SENSOR_MAPS_H
#define __SENSOR_MAPS_H

#include "../sensor.h"

/* The sensor's own processes (tgid -> 1): never traced, and protected. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} ignored_tgids SEC(".maps");

/* Files that must not run (inode -> enum block_how), filled by user space from the response policy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct file_key);
	__type(value, __u8);
} blocked_exec SEC(".maps");

/* Executables created or written since the sensor started (inode -> boot ns of the write):
 * the file programs fill it, the exec program flags an image found in it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, __u64);
} written SEC(".maps");

#endif /* __SENSOR_MAPS_H */
