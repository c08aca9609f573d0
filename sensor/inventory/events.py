"""The envelope of inventory events: a snapshot is ECS `event.kind: state`, a change is `event`."""
from __future__ import annotations

import time


def inventory_event(dataset: str, action: str, category: list[str], types: list[str], **fields) -> dict:
    kind = "state" if action == "snapshot" else "event"
    return {"event": {"kind": kind, "category": category, "type": types, "action": action,
                      "dataset": dataset, "module": fields.pop("module", "psutil")}, **fields}


def without_none(d: dict) -> dict:
    """Drops absent values, recursively: an unknown field is left out, never null."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = without_none(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


class Interval:
    """Due once per `seconds`, first after one interval (the snapshot is taken at start)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._next = time.monotonic() + seconds

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


def process_figures(pid: int) -> dict:
    """A service process's memory, CPU time and start, as service records carry them."""
    import psutil

    from ..schema import rfc3339

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            return {"memory_bytes": p.memory_info().rss, "cpu_seconds": round(t.user + t.system, 3),
                    "start": rfc3339(int(p.create_time() * 1e9))}
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return {}
