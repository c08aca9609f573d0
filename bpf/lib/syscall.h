/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Syscall arguments and number from the pt_regs that the raw sys_enter/sys_exit tracepoints pass. */
#ifndef __SENSOR_SYSCALL_H
#define __SENSOR_SYSCALL_H

/* libbpf before 1.2 has no sixth syscall argument accessor */
#ifndef PT_REGS_PARM6_CORE_SYSCALL
#if defined(__TARGET_ARCH_x86)
#define PT_REGS_PARM6_CORE_SYSCALL(x) BPF_CORE_READ(x, r9)
#elif defined(__TARGET_ARCH_arm64)
#define PT_REGS_PARM6_CORE_SYSCALL(x) BPF_CORE_READ(x, regs[5])
#endif
#endif

static __always_inline __u64 syscall_arg(struct pt_regs *regs, int i)
{
	switch (i) {
	case 0: return PT_REGS_PARM1_CORE_SYSCALL(regs);
	case 1: return PT_REGS_PARM2_CORE_SYSCALL(regs);
	case 2: return PT_REGS_PARM3_CORE_SYSCALL(regs);
	case 3: return PT_REGS_PARM4_CORE_SYSCALL(regs);
	case 4: return PT_REGS_PARM5_CORE_SYSCALL(regs);
	case 5: return PT_REGS_PARM6_CORE_SYSCALL(regs);
	}
	return 0;
}

/* The number of the call a tp_btf sys_exit program reports on. Its pt_regs is a trusted BTF
 * pointer, so this is a plain load, not a helper call: it runs on every syscall of the host. */
static __always_inline long syscall_nr(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return regs->orig_ax;
#elif defined(__TARGET_ARCH_arm64)
	return regs->syscallno;
#else
	return -1;
#endif
}

#endif /* __SENSOR_SYSCALL_H */
