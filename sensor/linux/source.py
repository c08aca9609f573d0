"""What every eBPF source shares: one loaded object, its ring buffer, attach, detach, close."""
from __future__ import annotations

import logging
import struct

from .libbpf import BpfObject
from .ringbuf import RingBuffer

log = logging.getLogger("sensor.linux")


class RingSource:
    """Owns a BpfObject and the RingBuffer of its `events` map; subclasses decode records."""

    module = "ebpf"
    capabilities: frozenset[str] = frozenset()  # see sensor.source
    ring_buffer_bytes: int
    event_types: tuple[int, ...] = ()  # whose failed reserves (the `lost` map) are this source's loss
    decode_errors = 0
    _obj: BpfObject | None = None
    _rb: RingBuffer | None = None

    @staticmethod
    def decode(raw: bytes):
        """One ring-buffer record to its record object, or None to skip it."""
        raise NotImplementedError

    def poll(self, max_records: int = 1 << 16) -> list:
        out = []
        for raw in self._rb.read(max_records):
            try:
                rec = self.decode(raw)
            except (struct.error, ValueError) as exc:
                self.decode_errors += 1
                log.warning("undecodable %s record (%d bytes): %s", self.name, len(raw), exc)
                continue
            if rec is not None:
                out.append(rec)
        return out

    def stats(self) -> dict:
        lost = self._obj.map("lost") if self._obj else None
        kernel = (sum(sum(lost.percpu_u64(t)) for t in self.event_types) + self._obj.recursion_misses()
                  if lost else 0)
        return {"lost_kernel": kernel, "lost_user": self.decode_errors, "queue_bytes": self.queue_bytes()}

    def _open(self, obj: BpfObject, setup=None, attach=None):
        """Maps the ring buffer and attaches (all programs, or as `attach` says); undoes
        everything if a step fails."""
        self._obj = obj
        try:
            if setup:
                setup(obj)
            self._rb = RingBuffer(obj.map_fd("events"), self.ring_buffer_bytes)
            attach(obj) if attach else obj.attach()
        except BaseException:
            self.close()
            raise
        return self

    def fileno(self) -> int:
        return self._rb.fileno()

    def queue_bytes(self) -> int:
        return self._rb.pending() if self._rb else 0

    def detach(self):
        """Stops new records; what the buffer holds can still be polled."""
        if self._obj:
            self._obj.detach()

    def close(self):
        if self._rb:
            self._rb.close()
            self._rb = None
        if self._obj:
            self._obj.close()
            self._obj = None
