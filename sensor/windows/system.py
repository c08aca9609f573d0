"""This Windows host as the OS reports it (sensor.backend.system): the interrupt-time boot clock,
process creation times, boot and machine ids from the registry, account names from psutil, and
byte-range file locks.

Records here carry Unix ns, not boot ns: ETW stamps events with FILETIME wall-clock times
(sensor.windows.winevent.filetime_ns converts them, the one place), and so do the Event Log and
GetProcessTimes. So the host's offset from the records' clock to the Unix epoch is 0, and the boot
clock serves only where a per-boot counter is needed (the event sequence)."""
from __future__ import annotations

import errno
import os
import platform
import time

# Start times are compared and hashed to this grain: Sysmon's UtcTime knows them to the ms, ETW
# and GetProcessTimes to 100 ns, psutil's float seconds to about 0.4 us.
NS_PER_TICK = 10_000_000
RELOAD_SIGNAL = None  # no SIGHUP: a Windows service reloads by restarting
_LOCK_OFFSET = 0x7FFFFFFF  # locked byte: past any segment's end, so readers never meet the lock


def _kernel32_clock():
    """QueryInterruptTimePrecise (Windows 10+: 100 ns units since boot, sleep included, never
    adjusted: CLOCK_BOOTTIME's equivalent), else QueryUnbiasedInterruptTime (sleep excluded)."""
    import ctypes

    for dll, name in (("kernel32", "QueryInterruptTimePrecise"), ("kernelbase", "QueryInterruptTimePrecise"),
                      ("kernel32", "QueryUnbiasedInterruptTime")):
        try:
            return getattr(getattr(ctypes.windll, dll), name)
        except (AttributeError, OSError):  # not exported by this DLL / this Windows, or not Windows
            continue
    return None


_QUERY = _kernel32_clock()


def boot_ns() -> int:
    """ns since boot: the event sequence's base (time.monotonic_ns where the API is absent, as in
    tests that force this backend on Linux)."""
    if _QUERY is None:
        return time.monotonic_ns()
    import ctypes

    value = ctypes.c_ulonglong()
    _QUERY(ctypes.byref(value))
    return value.value * 100


def record_ns() -> int:
    """Now in the clock Windows records carry: Unix ns (see the module's docstring)."""
    return time.time_ns()


def unix_offset_ns() -> int:
    return 0


def start_ticks(pid: int) -> int | None:
    """The process's creation time (Unix ns) in NS_PER_TICK units; None when it is gone."""
    from .kill import creation_ns_of

    ns = creation_ns_of(pid)
    if ns is None:
        import psutil

        try:  # no handle (a protected process, or not Windows): psutil's float seconds
            ns = int(psutil.Process(pid).create_time() * 1e9)
        except psutil.Error:
            return None
    return ns // NS_PER_TICK


def _registry(key: str, value: str) -> str:
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key) as k:
            return str(winreg.QueryValueEx(k, value)[0])
    except (ImportError, OSError):
        return ""


def machine_id() -> str:
    return _registry(r"SOFTWARE\Microsoft\Cryptography", "MachineGuid")


def boot_id() -> str:
    """A uuid per boot, stable across sensor restarts: the machine id and the kernel's boot
    counter (PrefetchParameters BootId), else the boot time to the minute (psutil)."""
    import uuid

    boot = _registry(r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management\PrefetchParameters",
                     "BootId")
    if not boot:
        import psutil

        boot = f"t{round(psutil.boot_time() / 60)}"
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{machine_id() or platform.node()}:{boot}"))


def os_fields() -> dict:
    return {"type": "windows", "kernel": platform.version(), "family": "windows"}


def user_name(uid: int) -> str | None:
    return None  # Windows has SIDs, not uids: names come from psutil and the events (DOMAIN\user)


def group_name(gid: int) -> str | None:
    return None
seed_attrs = ["pid", "ppid", "exe", "cmdline", "cwd", "username"]


def seed_ids(info: dict) -> tuple:
    """(uid, euid, gid, egid, account) of a psutil info dict: no numeric ids, the account as
    user.name and user.domain from psutil's DOMAIN\\user."""
    domain, _, name = (info.get("username") or "").rpartition("\\")
    account = tuple((k, v) for k, v in (("name", name), ("domain", domain)) if v)
    return None, None, None, None, account


UNKNOWN_IDS = (None, None, None, None, ())


def process_ids(p) -> tuple:
    """seed_ids of one psutil.Process (AccessDenied propagates)."""
    return seed_ids({"username": p.username()})


def boost_priority(n: int) -> None:
    """The process's priority class to above normal (Windows has classes, not nice steps)."""
    import psutil

    if n > 0:
        psutil.Process().nice(getattr(psutil, "ABOVE_NORMAL_PRIORITY_CLASS", 0x8000))


def lock(fd, wait: bool = True):
    """An exclusive lock on one byte past the data (msvcrt.locking is mandatory locking: a locked
    byte inside the file would fail other readers); dropped when the handle closes. OSError when
    another holds it and `wait` is false (with `wait`, msvcrt retries for 10 s)."""
    try:
        import msvcrt
    except ImportError:  # not Windows (a test forcing this backend): as a filesystem without locks
        raise OSError(errno.ENOLCK, "byte-range locks need Windows' msvcrt") from None
    fd = fd if isinstance(fd, int) else fd.fileno()
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
    finally:
        os.lseek(fd, pos, os.SEEK_SET)


# what the store adds to every os.open: binary (the C runtime's default text mode would write
# CRLF) and not inherited (O_CLOEXEC's equivalent)
OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)  # absent off Windows (tests)


def fsync_dir(path):
    """Nothing to do: os.open cannot open a directory here, and NTFS journals the rename."""


def open_to_read(path) -> int:
    """A file descriptor to read `path`, refusing a symlink: os.open has no O_NOFOLLOW here, so
    the link is checked first (a FIFO cannot be opened as a file at all)."""
    if os.path.islink(path):
        raise OSError(errno.ELOOP, "a symbolic link: not followed", path)
    return os.open(path, os.O_RDONLY | OPEN_FLAGS)


def set_owner(path, uid: int, gid: int):
    """Nothing to do: a file's owner here is in its ACL, which a move keeps; stat's uid and gid are 0."""


# the OS and installed programs (quarantined only when a policy says so), wherever Windows lives
SYSTEM_PREFIXES = tuple(p.rstrip("\\").lower() + "\\" for p in (
    os.environ.get("SystemRoot", r"C:\Windows"), os.environ.get("ProgramFiles", r"C:\Program Files"),
    os.environ.get("ProgramFiles(x86)", r"C:\Program Files (x86)"), r"C:\ProgramData\sensor"))


def system_file(path: str) -> bool:
    return path.lower().startswith(SYSTEM_PREFIXES)  # NTFS names are case-blind
