"""Our x86_64 syscalls by name in the i386 table (ADFA-LD's numbers), and i386 numbers back to names."""
from __future__ import annotations

from functools import lru_cache

from . import syscalls

# Where a 32-bit glibc makes another call for the same work (64-bit offsets and sizes, 32-bit
# ids, the new stat layout), an x86_64 call maps to that one, as the same program compiled for
# i386 would have made it. Socket calls keep their own i386 numbers (359-373, Linux 4.3 on);
# the kernels of ADFA-LD's time had only socketcall (102) for all of them.
ALIASES = {
    "mmap": "mmap2", "stat": "stat64", "lstat": "lstat64", "fstat": "fstat64",
    "newfstatat": "fstatat64", "fcntl": "fcntl64", "lseek": "_llseek", "select": "_newselect",
    "sendfile": "sendfile64", "statfs": "statfs64", "fstatfs": "fstatfs64",
    "truncate": "truncate64", "ftruncate": "ftruncate64", "fadvise64": "fadvise64_64",
    "getuid": "getuid32", "geteuid": "geteuid32", "getgid": "getgid32", "getegid": "getegid32",
    "setuid": "setuid32", "setgid": "setgid32", "setreuid": "setreuid32", "setregid": "setregid32",
    "setresuid": "setresuid32", "getresuid": "getresuid32", "setresgid": "setresgid32",
    "getresgid": "getresgid32", "getgroups": "getgroups32", "setgroups": "setgroups32",
    "chown": "chown32", "lchown": "lchown32", "fchown": "fchown32", "setfsuid": "setfsuid32",
    "setfsgid": "setfsgid32",
}
BACK = {v: k for k, v in ALIASES.items()}


@lru_cache(maxsize=None)
def to_i386() -> dict[int, int | None]:
    """x86_64 number -> i386 number, None where i386 has no such call."""
    nums = syscalls.numbers("i386")
    return {nr: nums.get(ALIASES.get(name, name)) for nr, name in syscalls.table("x86_64").items()}


def name_of(nr: int, table: str) -> str:
    """A syscall number of a table as the name our traces use (i386 aliases folded back)."""
    name = syscalls.table(table).get(nr)
    if name is None:
        return f"syscall_{nr}"
    return BACK.get(name, name) if table == "i386" else name
