"""The responder's kill on Linux: through a pidfd, which pins the process so a reused pid is never
hit, with the process's start time checked through /proc; and what it must never kill."""
from __future__ import annotations

import os
import signal

from .system import NS_PER_TICK, start_ticks

BLOCK_IN_KERNEL = True  # block-exec: the eBPF programs kill before the image runs (sensor/linux/block.py)


def protected_pids() -> set[int]:
    """pid 1, kthreadd, and this sensor with its whole parent chain."""
    pids, pid = {0, 1, 2}, os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
    return pids


def is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]) == 2 or int(fields[6]) & 0x00200000 != 0  # ppid kthreadd, PF_KTHREAD
    except (OSError, ValueError, IndexError):
        return False


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], list(children.get(pid, []))
    while todo:
        c = todo.pop()
        out.append(c)
        todo += children.get(c, [])
    return out


def kill(pid: int, start_ns: int | None) -> str:
    """SIGKILL `pid` if it still started at `start_ns` (records' clock; None: unchecked):
    `killed`, `gone` or `reused`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        # the pidfd pins the process; check it is the one the alert is about, not a reuse
        if start_ns is not None and start_ticks(pid) not in (start_ns // NS_PER_TICK, start_ns // NS_PER_TICK + 1):
            return "reused"
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return "killed"
    except ProcessLookupError:
        return "gone"
    finally:
        os.close(fd)
