"""Process inventory (`host.processes`): one snapshot at start, then only significant changes of
running processes (user, executable on disk, I/O and memory growth). Starts and ends are the
process source's job; here they only enter and leave the baseline."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from ..backend import NAME
from ..host import NS_PER_TICK, Host, start_ticks
from ..processes import user_name
from ..schema import rfc3339
from ..timersource import TimerSource
from .events import Interval, inventory_event, without_none

LINUX = NAME == "linux"
# One fixed list, so psutil reads each /proc file once per process (stat, status, io, statm).
# On Linux the executable is read with our own readlink: psutil hides the " (deleted)" suffix.
ATTRS = ["pid", "ppid", "name", "create_time", "io_counters", "memory_info",
         *(["uids"] if LINUX else ["username", "exe"])]
MEMORY_RATIO = 0.5  # rss grown by half since the last report also counts, past a floor:
MEMORY_RATIO_FLOOR = 10 << 20  # small processes doubling from 2 to 4 MiB are not news


@dataclass(slots=True)
class Seen:
    """What was last known (or last reported) of one running process."""

    create_time: float
    entity_id: str
    start: str
    user: dict
    exe: str | None
    exe_inode: tuple | None  # (dev, ino) of the image it runs, taken when first seen
    deleted: bool
    io: dict  # counters at the last io-growth report (or when first seen)
    memory: dict  # rss and vms at the last memory-growth report


def _exe(pid: int, info: dict) -> tuple[str | None, bool]:
    """The executable's path and whether it was deleted (or replaced by rename) on disk."""
    if not LINUX:
        return info.get("exe") or None, False
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None, False  # kernel thread, gone, or not ours to read
    if path.endswith(" (deleted)"):
        return path[:-10], True
    return path, False


def _inode(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _user(info: dict) -> dict:
    uids = info.get("uids")
    if uids is not None:  # the effective user, as in process events
        name = user_name(uids.effective)
        return {"id": str(uids.effective), **({"name": name} if name else {})}
    return {"name": info["username"]} if info.get("username") else {}


def _io(info: dict) -> dict:
    io = info.get("io_counters")
    return io._asdict() if io is not None else {}


def io_total(io: dict) -> int:
    """All bytes moved: read_chars/write_chars (Linux: files, pipes, sockets, page cache alike),
    else read/write (+ other on Windows) bytes."""
    if "read_chars" in io:
        return io["read_chars"] + io["write_chars"]
    return io.get("read_bytes", 0) + io.get("write_bytes", 0) + io.get("other_bytes", 0)


def _memory(info: dict) -> dict:
    mem = info.get("memory_info")
    return {"rss": mem.rss, "vms": mem.vms} if mem is not None else {}


class ProcessInventory(TimerSource):
    name = "host.processes"

    def __init__(self, interval: float = 5.0, io_threshold: int = 100 << 20,
                 memory_threshold: int = 100 << 20, host: Host | None = None):
        self.interval = interval
        self.io_threshold = io_threshold
        self.memory_threshold = memory_threshold
        self.host = host or Host()
        self.seen: dict[int, Seen] = {}
        self.scan_ms = 0.0  # cost of the last interval's scan
        self._pending: list[dict] = []
        self._timer: Interval | None = None

    def start(self):
        infos = [p.info for p in psutil.process_iter(ATTRS)]
        tracked = [(info, self._track(info)) for info in infos]  # all first: parents get their ids
        self._pending = [self._event("snapshot", ["info"], info, seen) for info, seen in tracked if seen]
        self._timer = Interval(self.interval)
        return self

    def stats(self) -> dict:
        return {**super().stats(), "tracked": len(self.seen), "scan_ms": round(self.scan_ms, 3)}

    def poll(self) -> list[dict]:
        out, self._pending = self._pending, []
        if self._timer is not None and self._timer.due():
            out += self.scan()
        return out

    def scan(self) -> list[dict]:
        """One pass over running processes: changes of known ones, new ones into the baseline."""
        t0 = time.perf_counter()
        out, alive = [], set()
        for p in psutil.process_iter(ATTRS):
            info = p.info
            pid = info["pid"]
            alive.add(pid)
            seen = self.seen.get(pid)
            if seen is None or seen.create_time != info["create_time"]:  # new, or the pid was reused
                self._track(info)
                continue
            out += self._changes(info, seen)
        for pid in self.seen.keys() - alive:
            del self.seen[pid]
        self.scan_ms = (time.perf_counter() - t0) * 1000
        return out

    def _track(self, info: dict) -> Seen | None:
        pid = info["pid"]
        ticks = start_ticks(pid) if LINUX else None
        if LINUX and ticks is None:
            return None  # ended between the listing and now
        if ticks is not None:
            start_ns = ticks * NS_PER_TICK
            entity_id, start = self.host.entity_id(pid, start_ns), rfc3339(self.host.unix_ns(start_ns))
        else:  # no /proc: the creation time psutil knows, to its own grain
            ct = int((info["create_time"] or 0) * 1e9)
            entity_id, start = self.host.entity_id(pid, ct - ct % NS_PER_TICK), rfc3339(ct)
        exe, deleted = _exe(pid, info)
        image = _inode(f"/proc/{pid}/exe") if LINUX else (_inode(exe) if exe else None)
        seen = Seen(info["create_time"], entity_id, start, _user(info), exe, image, deleted,
                    _io(info), _memory(info))
        self.seen[pid] = seen
        return seen

    def _changes(self, info: dict, seen: Seen) -> list[dict]:
        out = []
        user = _user(info)
        if user and user != seen.user:
            ev = self._event("user-change", ["change"], info, seen, user=user)
            ev["process"]["previous"] = {"user": seen.user}
            out.append(ev)
            seen.user = user
        exe, deleted = _exe(info["pid"], info)
        if exe != seen.exe:  # exec'd another image: process events carry that, just follow it
            seen.exe, seen.deleted = exe, deleted
            seen.exe_inode = _inode(f"/proc/{info['pid']}/exe") if LINUX else (_inode(exe) if exe else None)
        elif exe and not seen.deleted:
            on_disk = None if deleted else _inode(exe)
            if deleted or (on_disk is not None and seen.exe_inode is not None and on_disk != seen.exe_inode):
                ev = self._event("executable-changed", ["change"], info, seen)
                ev["event"]["reason"] = "deleted" if deleted else "replaced"
                ev["process"]["executable_deleted"] = deleted
                ev["process"]["previous"] = {"executable_inode": seen.exe_inode[1] if seen.exe_inode else None}
                ev["file"] = {"path": exe, **({"inode": str(on_disk[1])} if on_disk else {})}
                out.append(without_none(ev))
                seen.deleted = True  # reported once; the running image stays what it was
        io = _io(info)
        if io and io_total(io) - io_total(seen.io) >= self.io_threshold:
            ev = self._event("io-growth", ["change"], info, seen)
            ev["process"]["previous"] = {"io": seen.io}
            out.append(ev)
            seen.io = io
        mem = _memory(info)
        if mem and seen.memory:
            grown = mem["rss"] - seen.memory["rss"]
            if grown >= self.memory_threshold or (grown >= MEMORY_RATIO_FLOOR and
                                                  grown >= MEMORY_RATIO * seen.memory["rss"]):
                ev = self._event("memory-growth", ["change"], info, seen)
                ev["process"]["previous"] = {"memory": seen.memory}
                out.append(ev)
                seen.memory = mem
        return out

    def _event(self, action: str, types: list[str], info: dict, seen: Seen, user: dict | None = None) -> dict:
        pid, ppid = info["pid"], info.get("ppid")
        parent = self.seen.get(ppid) if ppid else None
        user = user if user is not None else seen.user
        process = {"pid": pid, "entity_id": seen.entity_id, "name": info.get("name") or None,
                   "executable": seen.exe, "start": seen.start,
                   "parent": {"pid": ppid or None, "entity_id": parent.entity_id if parent else None},
                   "user": user, "io": _io(info), "memory": _memory(info)}
        return without_none(inventory_event(self.name, action, ["process"], types,
                                            process=process, user=dict(user)))
