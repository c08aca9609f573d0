"""Facts about this host and boot: ids, names, clocks, and process entity ids. What the OS says
comes from the platform's system module (sensor.backend.system)."""
from __future__ import annotations

import hashlib
import platform
import socket
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from .backend import system

# the grain process start times are known to (Linux: USER_HZ ticks of /proc/PID/stat)
NS_PER_TICK = system.NS_PER_TICK
start_ticks = system.start_ticks  # pid -> its start in NS_PER_TICK units of the records' clock, or None


@dataclass
class Host:
    boot_id: str = field(default_factory=system.boot_id)
    hostname: str = field(default_factory=socket.gethostname)

    def __post_init__(self):
        self.sync_clock()

    @cached_property
    def id(self) -> str:
        return system.machine_id() or self.hostname

    @cached_property
    def ecs(self) -> dict:
        """The `host` object every event carries."""
        return {
            "name": self.hostname,
            "hostname": self.hostname,
            "id": self.id,
            "architecture": platform.uname().machine,
            "boot": {"id": self.boot_id},
            "os": system.os_fields(),
        }

    def sync_clock(self):
        """Offset from the records' clock (Linux: CLOCK_BOOTTIME) to the Unix epoch; refreshed to
        follow NTP steps."""
        self.boot_offset_ns = system.unix_offset_ns()

    def unix_ns(self, boot_ns: int) -> int:
        return boot_ns + self.boot_offset_ns

    def entity_id(self, pid: int, start_ns: int) -> str:
        """Stable id of a process: survives pid reuse, equal from /proc and from the kernel.

        start_ns is reduced to NS_PER_TICK because /proc only knows the start to that grain.
        """
        return _entity_id(self.boot_id, pid, start_ns // NS_PER_TICK)


@lru_cache(maxsize=8192)  # each process is named by its own events, its children's and its exit
def _entity_id(boot_id: str, pid: int, start_ticks: int) -> str:
    return hashlib.blake2b(f"{boot_id}:{pid}:{start_ticks}".encode(), digest_size=12).hexdigest()
