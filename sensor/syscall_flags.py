"""Symbolic names for the flag arguments of common syscalls: the trace's `flags` column.

Values come from Python's own os, mmap, socket and signal modules where they define them (so
they match the machine), else from the kernel's UAPI headers (x86_64, the syscall table we
ship). Names are joined by "|"; bits no name covers are kept as hex, so nothing is hidden.
"""
from __future__ import annotations

import mmap
import os
import signal
import socket


def _consts(module, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    return {n: getattr(module, n) for n in dir(module) if n.startswith(prefix) and n not in skip}


# matched composite flags first (O_TMPFILE holds O_DIRECTORY's bit, O_SYNC O_DSYNC's); Python
# has O_LARGEFILE as 0 where user space never needs it, the kernel's bit is 0o100000
OPEN = sorted({**_consts(os, "O_", ("O_ACCMODE", "O_RDONLY", "O_WRONLY", "O_RDWR", "O_NDELAY", "O_FSYNC",
                                    "O_RSYNC", "O_EXLOCK", "O_SHLOCK")),
               "O_LARGEFILE": os.O_LARGEFILE or 0o100000}.items(),
              key=lambda kv: (-bin(kv[1]).count("1"), kv[1]))
ACCESS_MODE = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
PROT = sorted(_consts(mmap, "PROT_").items())
MAP = sorted({**_consts(mmap, "MAP_", ("MAP_ANON",)),
              "MAP_FIXED": 0x10, "MAP_32BIT": 0x40, "MAP_GROWSDOWN": 0x100, "MAP_LOCKED": 0x2000,
              "MAP_NORESERVE": 0x4000, "MAP_NONBLOCK": 0x10000, "MAP_HUGETLB": 0x40000,
              "MAP_SYNC": 0x80000, "MAP_FIXED_NOREPLACE": 0x100000}.items(), key=lambda kv: kv[1])
SOCK_TYPES = {v: n for n, v in _consts(socket, "SOCK_", ("SOCK_NONBLOCK", "SOCK_CLOEXEC")).items()}
SOCK_FLAGS = [("SOCK_NONBLOCK", socket.SOCK_NONBLOCK), ("SOCK_CLOEXEC", socket.SOCK_CLOEXEC)]
FAMILIES = {v: n for n, v in _consts(socket, "AF_", ("AF_ROUTE",)).items()}
CLONE = [(n, 1 << i) for i, n in enumerate((
    "CLONE_VM", "CLONE_FS", "CLONE_FILES", "CLONE_SIGHAND", "CLONE_PIDFD", "CLONE_PTRACE", "CLONE_VFORK",
    "CLONE_PARENT", "CLONE_THREAD", "CLONE_NEWNS", "CLONE_SYSVSEM", "CLONE_SETTLS", "CLONE_PARENT_SETTID",
    "CLONE_CHILD_CLEARTID", "CLONE_DETACHED", "CLONE_UNTRACED", "CLONE_CHILD_SETTID", "CLONE_NEWCGROUP",
    "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_IO"), start=8)]
AT = [("AT_SYMLINK_NOFOLLOW", 0x100), ("AT_REMOVEDIR", 0x200), ("AT_SYMLINK_FOLLOW", 0x400),
      ("AT_NO_AUTOMOUNT", 0x800), ("AT_EMPTY_PATH", 0x1000), ("AT_STATX_FORCE_SYNC", 0x2000),
      ("AT_STATX_DONT_SYNC", 0x4000), ("AT_RECURSIVE", 0x8000)]
AT_EACCESS = [("AT_EACCESS", 0x200)] + [kv for kv in AT if kv[1] != 0x200]  # faccessat2 reuses the bit
ACCESS = [("R_OK", os.R_OK), ("W_OK", os.W_OK), ("X_OK", os.X_OK)]
RENAME = [("RENAME_NOREPLACE", 1), ("RENAME_EXCHANGE", 2), ("RENAME_WHITEOUT", 4)]
MFD = [("MFD_CLOEXEC", 1), ("MFD_ALLOW_SEALING", 2), ("MFD_HUGETLB", 4), ("MFD_NOEXEC_SEAL", 8),
       ("MFD_EXEC", 0x10)]
WAIT = [(n, getattr(os, n)) for n in ("WNOHANG", "WUNTRACED", "WEXITED", "WCONTINUED", "WNOWAIT")] + [
    ("__WNOTHREAD", 0x20000000), ("__WALL", 0x40000000), ("__WCLONE", 0x80000000)]  # WSTOPPED = WUNTRACED


def bits(value: int, table, by_bit: bool = True) -> list[str]:
    """The names of the flags set in value, in the order of their bits (or of the table), then
    any rest in hex."""
    found = []
    for name, bit in table:
        if bit and value & bit == bit:
            found.append((bit & -bit, name))
            value &= ~bit
    out = [name for _, name in (sorted(found) if by_bit else found)]
    if value:
        out.append(hex(value))
    return out


def open_flags(value: int) -> list[str]:
    mode = value & os.O_ACCMODE
    return [ACCESS_MODE.get(mode, hex(mode))] + bits(value & ~os.O_ACCMODE, OPEN)


def clone_flags(value: int) -> list[str]:
    out = bits(value & ~0xFF, CLONE)
    sig = value & 0xFF
    if sig:
        out.append(signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig))
    return out


def socket_args(domain: int, type_: int) -> list[str]:
    kind = type_ & 0xF
    return [FAMILIES.get(domain, f"family={domain}"), SOCK_TYPES.get(kind, f"type={kind}")] + \
        bits(type_ & ~0xF, SOCK_FLAGS)


def _access(mode: int) -> list[str]:
    return bits(mode, ACCESS, by_bit=False) or ["F_OK"]  # R_OK|W_OK|X_OK, as written


def _prot(prot: int) -> list[str]:
    return bits(prot, PROT) or ["PROT_NONE"]


# syscall -> (the arguments that hold its flags, what they say)
DECODERS = {
    "open": ((1,), open_flags),
    "openat": ((2,), open_flags),
    "pipe2": ((1,), lambda f: bits(f, OPEN)),
    "dup3": ((2,), lambda f: bits(f, OPEN)),
    "eventfd2": ((1,), lambda f: bits(f, OPEN)),
    "inotify_init1": ((0,), lambda f: bits(f, OPEN)),
    "accept4": ((3,), lambda f: bits(f, SOCK_FLAGS)),
    "socket": ((0, 1), socket_args),
    "socketpair": ((0, 1), socket_args),
    "mmap": ((2, 3), lambda prot, flags: _prot(prot) + bits(flags, MAP)),
    "mprotect": ((2,), _prot),
    "clone": ((0,), clone_flags),
    "unshare": ((0,), lambda f: bits(f, CLONE)),
    "setns": ((1,), lambda f: bits(f, CLONE)),
    "access": ((1,), _access),
    "faccessat": ((2,), _access),
    "faccessat2": ((2, 3), lambda mode, f: _access(mode) + bits(f, AT_EACCESS)),
    "unlinkat": ((2,), lambda f: bits(f, AT)),
    "newfstatat": ((3,), lambda f: bits(f, AT)),
    "statx": ((2,), lambda f: bits(f, AT)),
    "linkat": ((4,), lambda f: bits(f, AT)),
    "fchownat": ((4,), lambda f: bits(f, AT)),
    "execveat": ((4,), lambda f: bits(f, AT)),
    "utimensat": ((3,), lambda f: bits(f, AT)),
    "renameat2": ((4,), lambda f: bits(f, RENAME)),
    "memfd_create": ((1,), lambda f: bits(f, MFD)),
    "wait4": ((2,), lambda f: bits(f, WAIT)),
    "waitid": ((3,), lambda f: bits(f, WAIT)),
}


def decode(syscall: str, values) -> str | None:
    """The flags of one call as text, from the values of its DECODERS arguments (as int; only
    the low 32 bits count, flags are C ints); None where the call has none we decode."""
    entry = DECODERS.get(syscall)
    if entry is None:
        return None
    return "|".join(entry[1](*(int(v) & 0xFFFFFFFF for v in values))) or "0"
