"""Blocked scripts on Linux: the activity programs kill a process that opens a blocked file."""
from __future__ import annotations

import logging
import os

import numpy as np

from .. import wire
from ..errors import SensorError
from ..records import BlockedOpen
from .activity import Activity, ActivityPart

log = logging.getLogger("sensor.linux.block")

IO_URING_SYSCTL = "/proc/sys/kernel/io_uring_disabled"
OPEN_CALLS = ("open", "openat", "openat2", "open_by_handle_at")


def decode_blocked(raw: bytes) -> BlockedOpen:
    """An EVENT_BLOCKED record (a struct file_event, sent to the process ring) to its BlockedOpen."""
    r = np.frombuffer(raw, wire.file_event, count=1)[0]
    base = wire.file_event.itemsize
    path = raw[base:base + int(r["path_len"])].split(b"\0", 1)[0]
    return BlockedOpen(int(r["ts_ns"]), int(r["pid"]), int(r["tid"]), int(r["start_ns"]), path, int(r["dev"]),
                       int(r["ino"]), bytes(r["comm"]), truncated=bool(r["flags"] & wire.FILE_PATH_TRUNCATED))


def block_how(path: str | None) -> bytes:
    """The blocked_exec value of a file: its exec is stopped, and unless it is an ELF binary (a
    script, which runs by being read) every open of it for reading too. Without a path (a binary
    matched by hash at its exec), its exec."""
    how = wire.BLOCK_EXEC
    if path is not None:
        try:
            with open(path, "rb") as f:
                elf = f.read(4) == b"\x7fELF"
        except OSError:
            elf = False  # unreadable now: block it both ways
        how |= 0 if elf else wire.BLOCK_OPEN
    return bytes([how])


def _kdev(st_dev: int) -> int:
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def holders(files: set[tuple[int, int]]) -> dict[tuple[int, int], list[tuple[int, str]]]:
    """(kernel dev, inode) -> [(pid, name)] of the processes that hold one of `files` open, or run
    it, now: they read on without an open the kernel programs could stop."""
    out: dict[tuple[int, int], list[tuple[int, str]]] = {}
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            links = [f"/proc/{d}/fd/{fd}" for fd in os.listdir(f"/proc/{d}/fd")] + [f"/proc/{d}/exe"]
        except OSError:  # gone, or a kernel thread
            continue
        for link in links:
            try:
                st = os.stat(link)
            except OSError:
                continue
            key = (_kdev(st.st_dev), st.st_ino)
            if key in files:
                try:
                    with open(f"/proc/{d}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
                if (int(d), name) not in out.setdefault(key, []):
                    out[key].append((int(d), name))
    return out


class BlockSource(ActivityPart):
    """Turns on the open check (`block_on`) in the shared activity programs, with or without file
    events. Its records go to the process source's ring (shared), so it reads none itself."""

    name = "block"
    ring = "events"  # the process source's (shared): sized there
    event_types = ()  # its records, and their loss, are the process source's

    def __init__(self, activity: Activity, files: list[tuple[int, int, str]]):
        self.activity = activity
        self.files = list(files)  # (kernel dev, inode, path) listed at start
        self.ring_buffer_bytes = 4096
        activity.parts.append(self)

    def _shared(self) -> dict:
        return self.activity.shared() if self.activity.shared else {}

    def rodata(self, numbers):
        # without the process object's block list there is nothing to check against
        return {"block_on": "blocked_exec" in self._shared()}

    def setup(self, obj, numbers):
        from .file import call_table  # (file.py imports process.py, which imports this module)

        # every call that returns a new fd for a path (creat opens write-only: it reads nothing)
        entry = call_table(numbers)[numbers["openat"]]
        calls = obj.map("file_calls")
        for name in OPEN_CALLS:
            if name in numbers:
                calls.update(numbers[name], entry)

    def start(self):
        reason = None
        if "blocked_exec" not in self._shared():
            reason = "the eBPF process source is not running"
        else:
            try:
                self._obj = self.activity.load()
            except SensorError as exc:
                reason = str(exc).splitlines()[0]
        self.report(reason)
        return self

    def report(self, reason: str | None):
        """Names, for each listed file, the ways to run it that cannot be blocked here."""
        held = holders({(dev, ino) for dev, ino, _ in self.files}) if self.files else {}
        try:
            with open(IO_URING_SYSCTL) as f:
                io_uring = f.read().strip() != "2"
        except OSError:
            io_uring = False
        for dev, ino, path in self.files:
            gaps = []
            if reason:
                gaps.append(f"a script run of it (./FILE, sh FILE, python3 FILE): {reason}; only binaries "
                            "are blocked, at exec")
            for pid, name in held.get((dev, ino), []):
                gaps.append(f"pid {pid} ({name}), which has it open or running since before the sensor "
                            "started, reads on")
            if block_how(path)[0] == wire.BLOCK_EXEC:
                gaps.append("a run through the dynamic loader (ld.so FILE), which reads it without an exec: "
                            "a binary stays readable")
            if io_uring and not reason:
                gaps.append("opens through io_uring (kernel.io_uring_disabled < 2), which no syscall "
                            "tracepoint sees")
            if gaps:
                log.warning("block-exec %s: cannot block: %s", path, "; ".join(gaps))

    def poll(self, max_records: int = 0) -> list:
        return []

    def fileno(self):
        return None

    def stats(self) -> dict:
        return {**super().stats(), "files": len(self.files), "open_check": self._obj is not None}

    def close(self):
        if self._obj is not None:
            self._obj = None
            self.activity.release()
