"""The host of Windows records: their times are Unix ns already (FILETIME, UtcTime), so entity
ids and start times need no boot clock offset."""
from __future__ import annotations

from dataclasses import dataclass

from ..host import Host


@dataclass
class RecordedHost(Host):
    """`boot_id` names the log's source (its computer), so entity ids differ across hosts."""

    boot_id: str = "windows"
    hostname: str = "windows"

    def sync_clock(self):
        self.boot_offset_ns = 0

    @property
    def id(self) -> str:
        return self.hostname
