"""Syscall source on Linux: bpf/trace.bpf.c's paired enter/exit records, read in numpy batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import syscalls, wire
from .libbpf import BpfObject
from .source import RingSource

OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "trace.bpf.o"


class SyscallSource(RingSource):
    """Traces the processes in the process object's traced set; `poll` returns a structured array."""

    name = "syscalls"

    def __init__(self, trace_maps: dict[str, int], *, wanted: set[int] | None = None, with_args: bool = False,
                 ring_buffer_bytes: int = 32 << 20, wakeup_bytes: int | None = None,
                 object_path: Path = OBJECT):
        self.trace_maps = trace_maps
        self.wanted, self.with_args = wanted, with_args
        self.ring_buffer_bytes = ring_buffer_bytes
        # wake the reader at an eighth full: a wakeup per record would cost more than the tracing
        self.wakeup_bytes = ring_buffer_bytes // 8 if wakeup_bytes is None else wakeup_bytes
        self.object_path = object_path
        self.dtype = wire.syscall_args_event if with_args else wire.syscall_event
        self._final_lost = self._final_held = 0

    def start(self):
        nums = syscalls.numbers()
        obj = BpfObject(
            self.object_path,
            rodata={"wakeup_bytes": self.wakeup_bytes, "filter_syscalls": self.wanted is not None,
                    "with_args": self.with_args, "nr_exit": nums["exit"], "nr_exit_group": nums["exit_group"],
                    "nr_execve": nums["execve"], "nr_execveat": nums["execveat"]},
            max_entries={"events": self.ring_buffer_bytes},
            reuse=self.trace_maps)

        def fill_spec(o):
            if self.wanted is not None or self.with_args:
                spec_map = o.map("syscall_spec")
                for nr, entry in enumerate(syscalls.spec_table(self.wanted)):
                    spec_map.update(nr, entry.tobytes())

        return self._open(obj, fill_spec)

    def poll(self, max_batches: int = 1 << 14) -> np.ndarray:
        return self._rb.read_batches(self.dtype, max_batches)

    def held_back(self) -> np.ndarray:
        """The records the kernel still holds: the batches the ring refused, oldest first, then
        the per-CPU batches. Call after detach (nothing adds to them then) and after the ring is
        drained: per thread, these come last, in this order."""
        held = self._obj.map("held")
        queued = [np.frombuffer(held.lookup(i), wire.trace_held)[0] for i in range(wire.TRACE_HELD)]
        # an odd turn holds a batch; its queue position is lap * TRACE_HELD + slot
        waiting = sorted((int(h["turn"]) // 2 * wire.TRACE_HELD + i, h["batch"])
                         for i, h in enumerate(queued) if h["turn"] & 1)
        batches = [b for _, b in waiting]
        batches += [np.frombuffer(raw, wire.trace_batch)[0] for raw in self._obj.map("batch").percpu_values(0)]
        most = wire.TRACE_BATCH_ARGS if self.with_args else wire.TRACE_BATCH
        out = [np.frombuffer(b["recs"].tobytes(), self.dtype, count=min(int(b["n"]), most)) for b in batches]
        return np.concatenate(out) if out else np.empty(0, self.dtype)

    def held(self) -> int:
        """Batches the ring refused that waited in the kernel's queue (none lost by that)."""
        if self._obj is not None:
            self._final_held = sum(self._obj.map("held_count").percpu_u64(0))
        return self._final_held

    def lost(self) -> int:
        """Records that never reached user space: ring buffer full, or a run the kernel skipped."""
        if self._obj is None:
            return self._final_lost
        self._final_lost = sum(self._obj.map("lost").percpu_u64(wire.EVENT_SYSCALL)) + self._obj.recursion_misses()
        return self._final_lost

    def close(self):
        self.lost(), self.held()  # remembered: metadata and the summary are written after close
        super().close()
