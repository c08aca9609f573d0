"""The one interface every event source follows, and the optional capabilities a source names."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

# Optional capabilities: a source lists the ones it has in `capabilities` and then has the method
# of that name. The pipeline asks for a capability by name, never probes for a method.
SHARED_MAPS = "shared_maps"  # shared_maps() -> {map name: fd}: kernel maps other objects reuse
BLOCK = "block"  # block(dev, ino): add an executable to the block list while running
WATCH_PTRACE = "watch_ptrace"  # watch_ptrace(): report ptrace aimed at the sensor
# process_table(table): the pipeline's process cache, before start, for a source that finishes its
# own events (the Windows Event Log: each event keeps its record's winlog fields)
PROCESS_TABLE = "process_table"
CAPABILITIES = frozenset({SHARED_MAPS, BLOCK, WATCH_PTRACE, PROCESS_TABLE})


@runtime_checkable
class Source(Protocol):
    """Made by a platform backend (sensor.backend), started and polled by the pipeline.

    `poll` returns records (sensor.records, which the process cache turns into events) or
    finished event dicts; `fileno` is a descriptor that becomes readable when records wait, or
    None for a source polled every poll_interval; `stats` has at least lost_kernel, lost_user
    and queue_bytes; `detach` stops new records (what is queued can still be polled)."""

    name: str  # event.dataset of what it makes, and its key in sensor.health
    module: str  # event.module: the backend that made the records (ebpf, etw, psutil, ...)
    capabilities: frozenset[str]

    def start(self) -> "Source": ...

    def poll(self) -> list: ...

    def fileno(self) -> int | None: ...

    def stats(self) -> dict: ...

    def detach(self) -> None: ...

    def close(self) -> None: ...


def having(sources, capability: str) -> list:
    """The sources that declare `capability`."""
    return [s for s in sources if capability in s.capabilities]
