"""Syscall names and numbers per architecture, named groups, and which arguments to decode."""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import wire
from .errors import SensorError

DATA = Path(__file__).resolve().parent / "data"
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64"}

# Groups in the spirit of strace's %file, %network, ...: what researchers filter by.
GROUPS = {
    "file": """open openat openat2 creat stat lstat newfstatat statx access faccessat faccessat2
        execve execveat unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir chdir chroot
        chmod fchmodat chown lchown fchownat link linkat symlink symlinkat readlink readlinkat
        truncate utime utimes utimensat futimesat mknod mknodat statfs getxattr lgetxattr setxattr
        lsetxattr listxattr llistxattr removexattr lremovexattr mount umount2 swapon swapoff
        pivot_root name_to_handle_at inotify_add_watch fanotify_mark""",
    "desc": """read write close lseek pread64 pwrite64 readv writev preadv pwritev preadv2 pwritev2
        dup dup2 dup3 fcntl ioctl fstat fstatfs fsync fdatasync ftruncate getdents64 sendfile
        splice tee poll ppoll select pselect6 epoll_create1 epoll_ctl epoll_wait epoll_pwait
        eventfd2 pipe pipe2 fchmod fchown fchdir flock""",
    "network": """socket socketpair bind listen accept accept4 connect getsockname getpeername sendto
        recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt""",
    "process": """fork vfork clone clone3 execve execveat exit exit_group wait4 waitid kill tkill
        tgkill unshare setns prctl ptrace""",
    "memory": """mmap munmap mprotect brk mremap madvise msync mlock munlock mlockall munlockall
        mincore""",
    "signal": """rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait
        rt_sigqueueinfo rt_sigsuspend sigaltstack kill tkill tgkill signalfd4 pause""",
    "ipc": """msgget msgsnd msgrcv msgctl semget semop semctl semtimedop shmget shmat shmctl shmdt
        mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr""",
    "creds": """setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups
        capset getuid geteuid getgid getegid""",
}
GROUPS = {k: v.split() for k, v in GROUPS.items()}

# Which arguments hold paths (by index), a second path, and a sockaddr with its length.
PATHS = {
    "open": (0,), "creat": (0,), "openat": (1,), "openat2": (1,), "stat": (0,), "lstat": (0,),
    "newfstatat": (1,), "statx": (1,), "access": (0,), "faccessat": (1,), "faccessat2": (1,),
    "execve": (0,), "execveat": (1,), "unlink": (0,), "unlinkat": (1,), "rename": (0, 1),
    "renameat": (1, 3), "renameat2": (1, 3), "mkdir": (0,), "mkdirat": (1,), "rmdir": (0,),
    "chdir": (0,), "chroot": (0,), "chmod": (0,), "fchmodat": (1,), "chown": (0,), "lchown": (0,),
    "fchownat": (1,), "link": (0, 1), "linkat": (1, 3), "symlink": (0, 1), "symlinkat": (0, 2),
    "readlink": (0,), "readlinkat": (1,), "truncate": (0,), "utime": (0,), "utimes": (0,),
    "utimensat": (1,), "mknod": (0,), "mknodat": (1,), "statfs": (0,), "mount": (0, 1),
    "umount2": (0,), "swapon": (0,), "swapoff": (0,), "inotify_add_watch": (1,),
}
# name -> (sockaddr arg, length arg, filled at exit?)
ADDRS = {
    "connect": (1, 2, False), "bind": (1, 2, False), "sendto": (4, 5, False),
    "accept": (1, 2, True), "accept4": (1, 2, True), "recvfrom": (4, 5, True),
    "getsockname": (1, 2, True), "getpeername": (1, 2, True),
}


def arch() -> str:
    machine = platform.machine()
    if machine not in ARCHES:
        raise SensorError(f"no syscall table for {machine} yet", hint="x86_64 is supported")
    return ARCHES[machine]


@lru_cache(maxsize=None)
def table(name: str | None = None) -> dict[int, str]:
    """{number: name} for an architecture (default: this machine's)."""
    name = name or arch()
    out = {}
    for line in (DATA / f"syscalls-{name}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            nr, sc = line.split("\t")
            out[int(nr)] = sc
    return out


@lru_cache(maxsize=None)
def numbers(name: str | None = None) -> dict[str, int]:
    return {v: k for k, v in table(name).items()}


def names_array(name: str | None = None) -> list[str]:
    """Index -> name for every number below SYSCALL_NR_MAX (unknown: syscall_<nr>)."""
    t = table(name)
    return [t.get(i, f"syscall_{i}") for i in range(wire.SYSCALL_NR_MAX)]


def resolve(spec: str, name: str | None = None) -> set[int]:
    """`--syscalls openat,network,42` -> numbers; unknown names are an error naming them."""
    nums, wanted, unknown = numbers(name), set(), []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.isdigit():
            wanted.add(int(item))
        elif item in GROUPS:
            wanted.update(nums[s] for s in GROUPS[item] if s in nums)
        elif item in nums:
            wanted.add(nums[item])
        else:
            unknown.append(item)
    if unknown:
        raise SensorError(f"--syscalls: unknown {', '.join(unknown)}",
                          hint=f"use syscall names, numbers or groups: {', '.join(sorted(GROUPS))}")
    return wanted


def spec_table(wanted: set[int] | None, name: str | None = None) -> np.ndarray:
    """The kernel's syscall_spec array: wanted flags and which arguments to decode."""
    spec = np.zeros(wire.SYSCALL_NR_MAX, dtype=wire.syscall_spec)
    none = wire.SPEC_ARG_NONE
    spec["path_arg"] = spec["path2_arg"] = spec["addr_arg"] = spec["addrlen_arg"] = none
    nums = numbers(name)
    for nr in range(wire.SYSCALL_NR_MAX):
        if wanted is None or nr in wanted:
            spec["flags"][nr] |= wire.SPEC_WANTED
    for sc, args in PATHS.items():
        if sc in nums:
            spec["path_arg"][nums[sc]] = args[0]
            if len(args) > 1:
                spec["path2_arg"][nums[sc]] = args[1]
    for sc, (addr, length, at_exit) in ADDRS.items():
        if sc in nums:
            spec["addr_arg"][nums[sc]], spec["addrlen_arg"][nums[sc]] = addr, length
            if at_exit:
                spec["flags"][nums[sc]] |= wire.SPEC_ADDR_AT_EXIT
    return spec
