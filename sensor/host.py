"""Facts about this host and boot: ids, names, clocks, and process entity ids."""
from __future__ import annotations

import hashlib
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

# /proc/PID/stat reports start times in USER_HZ ticks; the kernel's start_boottime is in ns.
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class Host:
    boot_id: str = field(default_factory=lambda: _read("/proc/sys/kernel/random/boot_id") or "unknown")
    hostname: str = field(default_factory=socket.gethostname)

    def __post_init__(self):
        self.sync_clock()

    @cached_property
    def id(self) -> str:
        return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or self.hostname

    @cached_property
    def ecs(self) -> dict:
        """The `host` object every event carries."""
        uname = platform.uname()
        return {
            "name": self.hostname,
            "hostname": self.hostname,
            "id": self.id,
            "architecture": uname.machine,
            "boot": {"id": self.boot_id},
            "os": {"type": uname.system.lower(), "kernel": uname.release, "family": _os_family()},
        }

    def sync_clock(self):
        """Offset from CLOCK_BOOTTIME to the Unix epoch; refreshed to follow NTP steps."""
        self.boot_offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def unix_ns(self, boot_ns: int) -> int:
        return boot_ns + self.boot_offset_ns

    def entity_id(self, pid: int, start_ns: int) -> str:
        """Stable id of a process: survives pid reuse, equal from /proc and from the kernel.

        start_ns is reduced to USER_HZ ticks because /proc only knows the start to that grain.
        """
        return _entity_id(self.boot_id, pid, start_ns // NS_PER_TICK)


@lru_cache(maxsize=8192)  # each process is named by its own events, its children's and its exit
def _entity_id(boot_id: str, pid: int, start_ticks: int) -> str:
    return hashlib.blake2b(f"{boot_id}:{pid}:{start_ticks}".encode(), digest_size=12).hexdigest()


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: the process's start_boottime in USER_HZ ticks (comm may hold
    spaces, hence the split after its closing parenthesis); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _os_family() -> str:
    data = _read("/etc/os-release")
    for line in data.splitlines():
        if line.startswith("ID="):
            return line[3:].strip('"')
    return platform.system().lower()
