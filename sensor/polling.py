"""The portable process backend: psutil polling, for hosts where eBPF cannot load (no BTF, no
root). Reduced guarantees: processes that live less than an interval may be missed, and exit
codes are unknown (a poller only sees that a process is gone)."""
from __future__ import annotations

import os
import time

import psutil

from .backend import system
from .host import NS_PER_TICK, start_ticks
from .records import ProcessExec, ProcessExit
from .timersource import TimerSource


class PollingProcessSource(TimerSource):
    name = "process"

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._known: dict[int, tuple[int, int]] = {}  # pid -> (start ticks, ppid)
        self._next = 0.0

    def start(self):
        self._known = self._scan()  # the snapshot at start is the process cache's job
        self._next = time.monotonic() + self.interval
        return self


    def _scan(self) -> dict[int, tuple[int, int]]:
        out = {}
        for p in psutil.process_iter(["pid", "ppid"]):
            ticks = start_ticks(p.info["pid"])
            if ticks is not None:
                out[p.info["pid"]] = (ticks, p.info["ppid"] or 0)
        return out

    def poll(self) -> list:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval
        boot_ns = system.record_ns()  # the clock of the kernel's records (Windows: Unix ns)
        current = self._scan()
        records = []
        for pid, (ticks, ppid) in self._known.items():
            if current.get(pid, (None,))[0] != ticks:
                records.append(ProcessExit(boot_ns, pid, ppid, ticks * NS_PER_TICK, None, b""))
        for pid, (ticks, ppid) in current.items():
            if self._known.get(pid, (None,))[0] != ticks and pid != os.getpid():
                rec = self._exec(pid, ticks, ppid, boot_ns)
                if rec is not None:
                    records.append(rec)
        self._known = current
        return records

    def _exec(self, pid: int, ticks: int, ppid: int, boot_ns: int) -> ProcessExec | None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                args = p.cmdline()
                uid, euid, gid, egid, account = system.process_ids(p)
                exe = cwd = None
                try:
                    exe, cwd = p.exe() or None, p.cwd()
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    pass  # another user's process, seen without root
                name = p.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None  # came and went between the scan and now
        except psutil.AccessDenied:
            args, exe, cwd, name = [], None, None, ""
            uid, euid, gid, egid, account = system.UNKNOWN_IDS
        parent = start_ticks(ppid) if ppid else None
        return ProcessExec(
            ts_ns=boot_ns, pid=pid, tid=pid, ppid=ppid, start_ns=ticks * NS_PER_TICK,
            parent_start_ns=(parent or 0) * NS_PER_TICK,
            uid=uid, gid=gid, euid=euid, egid=egid, account=account,
            argc=len(args), args=tuple(a.encode("utf-8", "surrogateescape") for a in args),
            filename=(exe or name).encode("utf-8", "surrogateescape"),
            executable=exe.encode("utf-8", "surrogateescape") if exe else None,
            cwd=cwd.encode("utf-8", "surrogateescape") if cwd else None, comm=name.encode()[:15])
