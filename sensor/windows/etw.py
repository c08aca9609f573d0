"""Live ETW sessions through pywintrace (Windows only, imported at start): one session per
provider definition in etw/, its callback queueing events that `poll` maps into records. Kept
thin: what an event becomes is decided in sensor.windows.mappers, tested on recorded events."""
from __future__ import annotations

import logging
import subprocess
import time
from collections import deque

from ..errors import SensorError
from .mappers import Mapper
from .providers import Provider
from .winevent import from_pywintrace

log = logging.getLogger("sensor.windows")
ERROR_ALREADY_EXISTS = 183


class EtwSource:
    """A real-time session of `providers` (each with its keywords and event ids from etw/)."""

    module = "etw"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, name: str, providers: list[Provider], mapper: Mapper, paths: list[str] | None = None,
                 max_queued: int = 200_000):
        self.name, self.providers, self.mapper = name, providers, mapper
        self.session = providers[0].session
        # Kernel-File is host-wide: only the key directories are reported (case-insensitive prefixes)
        self.prefixes = tuple(p.lower().rstrip("\\") + "\\" for p in paths or ())
        self.max_queued = max_queued
        self._queue: deque = deque()
        self._job = None
        self.overflow = 0

    def start(self):
        try:
            import etw  # pywintrace: ctypes over advapi32/tdh, importable only on Windows
        except (ImportError, AttributeError, OSError) as exc:
            raise SensorError(f"ETW session {self.session}: pywintrace unavailable ({exc})",
                              hint="pip install 'sensor[windows]' (docs/windows.md)") from None
        if self.mapper.drives.devices == {}:  # this host's \\Device\\HarddiskVolumeN -> C:
            from .paths import Drives

            self.mapper.drives = Drives.of_this_host()
        infos = [etw.ProviderInfo(p.name, etw.GUID("{" + p.guid + "}"), level=p.level, any_keywords=p.any_keywords)
                 for p in self.providers]
        ids = sorted({eid for p in self.providers for eid in p.events})
        self._job = etw.ETW(session_name=self.session, providers=infos, event_callback=self._on_event,
                            event_id_filters=ids, ignore_exists_error=False)
        try:
            self._job.start()
        except OSError as exc:
            if getattr(exc, "winerror", None) != ERROR_ALREADY_EXISTS:
                raise SensorError(f"ETW session {self.session}: {exc}", hint="run elevated (Administrator)") from None
            # a crashed sensor's session outlives it: stop it, then start ours
            subprocess.run(["logman", "stop", self.session, "-ets"], capture_output=True, check=False)
            self._job.start()
        log.info("ETW session %s: %s", self.session, ", ".join(p.name for p in self.providers))
        return self

    def _on_event(self, tufo):
        if len(self._queue) >= self.max_queued:  # poll() fell behind: count, never grow
            self.overflow += 1
            return
        self._queue.append(tufo)

    def poll(self) -> list:
        out = []
        while self._queue:
            ev = from_pywintrace(*self._queue.popleft())
            for rec in self.mapper.map(ev):
                if self.prefixes and type(rec).__name__ == "FileActivity" and \
                        not rec.path.decode("utf-8", "replace").lower().startswith(self.prefixes):
                    continue
                out.append(rec)
        return out + self.mapper.flush(time.time_ns())

    def fileno(self):
        return None

    def stats(self) -> dict:
        lost = 0
        if self._job is not None:
            try:  # session statistics: buffers and events the kernel dropped
                q = self._job.query()
                lost = int(getattr(q, "EventsLost", 0)) + int(getattr(q, "RealTimeBuffersLost", 0))
            except (OSError, AttributeError):
                pass
        return {"lost_kernel": lost, "lost_user": self.overflow, "queue_bytes": 0, "unknown": self.mapper.unknown}

    def detach(self):
        if self._job is not None:
            self._job.stop()
            self._job = None

    def close(self):
        self.detach()
