"""Killing a process on Windows through a handle, with the safety rules of sensor.respond: never
the System processes or the sensor and its parents, and never a reused pid (the handle pins the
process; its creation time must be the alert's). Block-exec here is after the fact: Windows gives
us no hook before an image runs, so a blocked image is killed at its process start event."""
from __future__ import annotations

import os

PROCESS_TERMINATE, PROCESS_QUERY_LIMITED_INFORMATION, SYNCHRONIZE = 0x0001, 0x1000, 0x100000
PROTECTED = {0, 4}  # System Idle Process, System


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


def creation_ns(handle) -> int | None:
    """The process's creation time (Unix ns) from GetProcessTimes."""
    import ctypes
    from ctypes import wintypes

    times = [wintypes.FILETIME() for _ in range(4)]
    if not ctypes.windll.kernel32.GetProcessTimes(handle, *map(ctypes.byref, times)):
        return None
    ft = times[0].dwHighDateTime << 32 | times[0].dwLowDateTime
    return (ft - 116444736000000000) * 100


def kill(pid: int, start_ns: int | None, tolerance_ns: int = 20_000_000) -> str:
    """`killed`, `gone`, `reused` (the pid is another process now) or `denied`."""
    import ctypes

    k32 = ctypes.windll.kernel32
    handle = k32.OpenProcess(PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, False, pid)
    if not handle:
        return "gone" if ctypes.GetLastError() == 87 else "denied"  # ERROR_INVALID_PARAMETER: no such pid
    try:
        if start_ns is not None:
            created = creation_ns(handle)
            if created is None or abs(created - start_ns) > tolerance_ns:
                return "reused"
        return "killed" if k32.TerminateProcess(handle, 1) else "denied"
    finally:
        k32.CloseHandle(handle)
