"""Live Event Log channels through pywin32's EvtSubscribe (Windows only): Sysmon, and the
Security log's process creations and service installs. The records are rendered as XML and
mapped like .evtx records (winevent.from_event_xml), and finished as `sensor hunt` finishes
them (winevent.events_of): each event carries its record's winlog channel, event and record ids."""
from __future__ import annotations

import logging
from collections import deque

from ..errors import SensorError
from ..source import PROCESS_TABLE
from .mappers import Mapper
from .providers import load
from .winevent import events_of, from_event_xml

log = logging.getLogger("sensor.windows")
# channel -> event ids subscribed to; logons (4624/4625) and 7045 are the login inventory's
SUBSCRIPTIONS = {"Microsoft-Windows-Sysmon/Operational": (1, 3, 11, 12, 13, 22), "Security": (4688, 4697)}


def xpath(ids) -> str:
    return "*[System[(" + " or ".join(f"EventID={i}" for i in ids) + ")]]"


class EventLogSource:
    """New records of SUBSCRIPTIONS' channels from now on; a channel that does not exist (no
    Sysmon) is skipped with a warning."""

    name = "eventlog"
    module = "winlog"
    capabilities: frozenset[str] = frozenset({PROCESS_TABLE})

    def __init__(self, mapper: Mapper, max_queued: int = 200_000):
        self.mapper, self.max_queued = mapper, max_queued
        self.table = None
        self._queue: deque = deque()
        self._subscriptions = []
        self.overflow = 0
        known = {p.channel for p in load().values() if p.channel}
        assert set(SUBSCRIPTIONS) <= known  # every channel has a definition in etw/

    def process_table(self, table):
        """The pipeline's process cache: this source hands over finished events."""
        self.table = self.mapper.table = table

    def start(self):
        if self.table is None:
            raise SensorError("Event Log: no process table (the pipeline gives it before start)")
        try:
            import win32evtlog
        except ImportError as exc:
            raise SensorError(f"Event Log: pywin32 unavailable ({exc})", hint="pip install pywin32") from None
        for channel, ids in SUBSCRIPTIONS.items():
            try:
                self._subscriptions.append(win32evtlog.EvtSubscribe(
                    channel, win32evtlog.EvtSubscribeToFutureEvents, Query=xpath(ids), Callback=self._on_event))
            except Exception as exc:  # pywintypes.error: no such channel, access denied
                log.warning("Event Log channel %s not followed: %s", channel, exc)
        if not self._subscriptions:
            raise SensorError("Event Log: no channel could be followed", hint="run elevated; install Sysmon")
        return self

    def _on_event(self, action, context, handle):
        import win32evtlog

        if len(self._queue) >= self.max_queued:
            self.overflow += 1
            return 0
        self._queue.append(win32evtlog.EvtRender(handle, win32evtlog.EvtRenderEventXml))
        return 0

    def poll(self) -> list:
        out = []
        while self._queue:
            out += events_of(from_event_xml(self._queue.popleft()), self.mapper, self.table)
        return out

    def fileno(self):
        return None

    def stats(self) -> dict:
        starts = self.mapper.starts  # reports of a process another source had reported: merged
        return {"lost_kernel": 0, "lost_user": self.overflow, "queue_bytes": 0,
                "merged_starts": starts.merged if starts is not None else 0}

    def detach(self):
        self._subscriptions.clear()  # closing the handles ends the subscriptions

    def close(self):
        self.detach()
