"""The file, network and security sources share one loaded bpf/activity.bpf.o: one pair of raw
syscall programs for all three (each pair costs every syscall on the host), each source with its
own ring buffer, decoder and loss counts."""
from __future__ import annotations

import os
from pathlib import Path

from .. import syscalls
from ..errors import SensorError
from .libbpf import BpfObject
from .ringbuf import RingBuffer
from .source import RingSource

OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "activity.bpf.o"
_UNUSED_RING = 4096  # common.h's `events` ring: unused here, kept at its smallest


class Activity:
    """Loaded once, when the first of its parts starts, with every part registered by then;
    closed when the last part closes. A failed load fails every part the same way."""

    def __init__(self, shared=None):
        self.shared = shared  # a callable giving {map name: fd} of the process source's shared maps
        self.parts: list[ActivityPart] = []
        self.obj: BpfObject | None = None
        self._error: SensorError | None = None
        self._users = 0
        self._attached = False

    def load(self) -> BpfObject:
        if self._error is not None:
            raise self._error
        if self.obj is None:
            try:
                self.obj = self._load()
            except SensorError as exc:
                self._error = exc
                raise
        self._users += 1
        return self.obj

    def _load(self) -> BpfObject:
        numbers = syscalls.numbers()  # SensorError on an arch without a table: the parts fall back
        names = {p.name for p in self.parts}
        rodata = {"wakeup_bytes": 0, "file_on": "file" in names, "net_on": "network" in names,
                  "security_on": "security" in names}
        rings = {"events": _UNUSED_RING, "file_events": 4096, "net_events": 4096, "sec_events": 4096}
        for p in self.parts:
            rodata.update(p.rodata(numbers))
            rings[p.ring] = p.ring_buffer_bytes
        reuse = self.shared() if self.shared else {}
        obj = BpfObject(OBJECT, rodata=rodata, max_entries=rings, reuse=reuse)
        try:
            if "ignored_tgids" not in reuse:
                obj.map("ignored_tgids").update(os.getpid(), b"\x01")
            for p in self.parts:
                p.setup(obj, numbers)
            # blocking alone needs only the exit program: sys_enter is left untouched
            enter = ["activity_enter"] if names & {"file", "network", "security"} else []
            obj.attach(enter + ["activity_exit"] + (["handle_tcp_state", "handle_tcp_state_nested"] if "network" in names else []))
        except BaseException:
            obj.close()
            raise
        return obj

    def detach(self):
        if self.obj is not None:
            self.obj.detach()

    def release(self):
        self._users -= 1
        if self._users <= 0 and self.obj is not None:
            self.obj.close()
            self.obj = None


class ActivityPart(RingSource):
    """A source reading its own ring of the shared activity object."""

    ring: str  # its ring buffer map

    def __init__(self, activity: Activity, ring_buffer_bytes: int):
        self.activity = activity
        self.ring_buffer_bytes = ring_buffer_bytes
        activity.parts.append(self)

    def rodata(self, numbers: dict[str, int]) -> dict:
        return {}

    def setup(self, obj: BpfObject, numbers: dict[str, int]):
        pass

    def start(self):
        obj = self.activity.load()
        try:
            self._rb = RingBuffer(obj.map_fd(self.ring), self.ring_buffer_bytes)
        except BaseException:
            self.activity.release()
            raise
        self._obj = obj
        return self

    def stats(self) -> dict:
        out = super().stats()
        if self._obj is not None and self.activity.parts[0] is not self:
            out["lost_kernel"] -= self._obj.recursion_misses()  # the programs are shared: counted once
        return out

    def detach(self):
        self.activity.detach()

    def close(self):
        if self._rb:
            self._rb.close()
            self._rb = None
        if self._obj is not None:
            self._obj = None
            self.activity.release()
