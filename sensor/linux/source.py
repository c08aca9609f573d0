"""What every eBPF source shares: one loaded object, its ring buffer, attach, detach, close."""
from __future__ import annotations

from .libbpf import BpfObject
from .ringbuf import RingBuffer


class RingSource:
    """Owns a BpfObject and the RingBuffer of its `events` map; subclasses decode records."""

    ring_buffer_bytes: int
    _obj: BpfObject | None = None
    _rb: RingBuffer | None = None

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
