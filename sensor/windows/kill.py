"""Killing a process on Windows through a handle, with the safety rules of sensor.respond: never
the System processes or the sensor and its parents, and never a reused pid (the handle pins the
process; its creation time must be the alert's). Block-exec here is after the fact: Windows gives
us no hook before an image runs, so a blocked image is killed at its process start event."""
from __future__ import annotations

import os
from functools import lru_cache

PROCESS_TERMINATE, PROCESS_QUERY_LIMITED_INFORMATION, SYNCHRONIZE = 0x0001, 0x1000, 0x100000
PROTECTED = {0, 4}  # System Idle Process, System
# the kernel's minimal processes (children of System): not programs a policy could mean
MINIMAL = {"registry", "secure system", "memory compression", "memcompression"}
BLOCK_IN_KERNEL = False  # block-exec: sensor.respond kills at the process start event instead


def protected_pids() -> set[int]:
    """The System processes, and this sensor with its parent chain (psutil)."""
    import psutil

    pids = set(PROTECTED)
    p = psutil.Process(os.getpid())
    while p is not None:
        pids.add(p.pid)
        try:
            p = p.parent()
        except psutil.Error:
            break
    return pids


def is_kernel_thread(pid: int) -> bool:
    """System and its minimal processes (Registry, Memory Compression, Secure System)."""
    import psutil

    if pid in PROTECTED:
        return True
    try:
        p = psutil.Process(pid)
        return p.ppid() == 4 and p.name().lower() in MINIMAL
    except psutil.Error:
        return False


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@lru_cache(maxsize=1)
def _kernel32():
    """kernel32 with the prototypes declared (a HANDLE is pointer-wide) and GetLastError kept."""
    import ctypes
    from ctypes import wintypes

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    k32.GetProcessTimes.argtypes = (wintypes.HANDLE,) + (ctypes.POINTER(wintypes.FILETIME),) * 4
    k32.TerminateProcess.argtypes = (wintypes.HANDLE, wintypes.UINT)
    k32.CloseHandle.argtypes = (wintypes.HANDLE,)
    return k32


def creation_ns(handle) -> int | None:
    """The process's creation time (Unix ns) from GetProcessTimes."""
    import ctypes
    from ctypes import wintypes

    from .winevent import filetime_ns

    times = [wintypes.FILETIME() for _ in range(4)]
    if not _kernel32().GetProcessTimes(handle, *map(ctypes.byref, times)):
        return None
    return filetime_ns(times[0].dwHighDateTime << 32 | times[0].dwLowDateTime)


def creation_ns_of(pid: int) -> int | None:
    """creation_ns of `pid` through a query-only handle; None when it is gone, not ours to open,
    or this is not Windows."""
    try:
        k32 = _kernel32()
    except (AttributeError, OSError):  # ctypes.WinDLL: Windows only
        return None
    handle = k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return None
    try:
        return creation_ns(handle)
    finally:
        k32.CloseHandle(handle)


def kill(pid: int, start_ns: int | None, tolerance_ns: int = 20_000_000) -> str:
    """`killed`, `gone`, `reused` (the pid is another process now) or `denied`; `start_ns`: when
    the process the alert names was created (Unix ns; None: unchecked)."""
    import ctypes

    k32 = _kernel32()
    handle = k32.OpenProcess(PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, False, pid)
    if not handle:
        return "gone" if ctypes.get_last_error() == 87 else "denied"  # ERROR_INVALID_PARAMETER: no such pid
    try:
        if start_ns is not None:
            created = creation_ns(handle)
            if created is None or abs(created - start_ns) > tolerance_ns:
                return "reused"
        return "killed" if k32.TerminateProcess(handle, 1) else "denied"
    finally:
        k32.CloseHandle(handle)
