/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The struct file behind a file descriptor of the current task. */
#ifndef __SENSOR_FD_H
#define __SENSOR_FD_H

static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

#endif /* __SENSOR_FD_H */
