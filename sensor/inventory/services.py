"""Service inventory (`host.services`): a snapshot at start, then state changes, additions,
removals and configuration changes, over one backend per service manager (systemd over D-Bus,
SysV init scripts, the Windows service manager)."""
from __future__ import annotations

import logging
import os

from ..timersource import TimerSource
from .events import Interval, inventory_event, without_none

log = logging.getLogger("sensor.inventory")

# Fields whose change is news; memory, CPU and start time move on their own and are not.
COMPARED = ("state", "sub_state", "start_mode", "description", "display_name", "unit_file",
            "pid", "executable", "command_line", "user")


def service_event(action: str, rec: dict, previous: dict | None = None, module: str | None = None) -> dict:
    """One service record (the backends' flat dict) in the schema."""
    types = {"snapshot": ["info"], "added": ["creation"], "removed": ["deletion"]}.get(action, ["change"])
    service = {k: rec.get(k) for k in ("name", "type", "state", "sub_state", "start_mode", "description",
                                       "display_name", "unit_file", "start", "memory_bytes", "cpu_seconds")}
    ev = inventory_event("host.services", action, ["configuration"], types, module=module or rec["type"],
                         service=service,
                         process={"pid": rec.get("pid") or None, "executable": rec.get("executable"),
                                  "command_line": rec.get("command_line")},
                         user={"name": rec.get("user")})
    if rec.get("code"):
        ev["event"]["code"] = rec["code"]
    ev = without_none(ev)
    if previous:  # the changed fields' old values; null where there was none (no pid when stopped)
        ev["service"]["previous"] = previous
    return ev


def diff(before: dict[str, dict], after: dict[str, dict | None], module: str) -> list[dict]:
    """Events for the services in `after` (None: gone) that differ from `before`."""
    out = []
    for name, new in after.items():
        old = before.get(name)
        if new is None:
            if old is not None:
                out.append(service_event("removed", old, module=module))
            continue
        if old is None:
            out.append(service_event("added", new, module=module))
            continue
        changed = {k: old.get(k) for k in COMPARED if old.get(k) != new.get(k)}
        if changed:
            action = "state-change" if {"state", "sub_state"} & changed.keys() else "changed"
            out.append(service_event(action, new, changed, module=module))
    return out


def _systemd_booted() -> bool:
    return os.path.isdir("/run/systemd/system")  # sd_booted(): systemd is PID 1


def open_backend(backend: str = "auto", init_dir: str = "/etc/init.d", bus: str = "SYSTEM"):
    """The Linux backend asked for; where it cannot run, the SysV one, with a warning."""
    if backend == "systemd" or (backend == "auto" and _systemd_booted()):
        try:
            from .services_systemd import SystemdBackend

            return SystemdBackend(bus)
        except Exception as exc:  # no bus, no jeepney, refused: the sensor runs on without it
            log.warning("services: systemd over D-Bus unavailable (%s); falling back to SysV init scripts "
                        "in %s", exc, init_dir)
    elif backend == "auto":
        log.warning("services: systemd is not PID 1 here; reading SysV init scripts in %s (states come "
                    "from pid files and the process table)", init_dir)
    from .services_sysv import SysvBackend

    return SysvBackend(init_dir)


class ServiceInventory(TimerSource):
    name = "host.services"

    def __init__(self, interval: float = 5.0, backend: str = "auto", init_dir: str = "/etc/init.d",
                 bus: str = "SYSTEM"):
        self.interval = interval
        self._args = (backend, init_dir, bus)
        self.backend = None
        self.known: dict[str, dict] = {}
        self._pending: list[dict] = []
        self._timer: Interval | None = None

    @property
    def module(self) -> str:
        return self.backend.type if self.backend else "sensor"

    def start(self):
        from .. import backend  # the platform's service manager

        self.backend = backend.service_backend(*self._args)
        self.known = self.backend.snapshot()
        self._pending = [service_event("snapshot", r) for _, r in sorted(self.known.items())]
        self._timer = Interval(self.interval)
        return self

    def fileno(self):
        return self.backend.fileno() if self.backend else None

    def stats(self) -> dict:
        return {**super().stats(), "backend": self.module, "services": len(self.known)}

    def poll(self) -> list[dict]:
        out, self._pending = self._pending, []
        if self.backend is None:
            return out
        # event-driven backends say which services changed; the others are rescanned on a timer
        changed = self.backend.changes()
        if changed is None and self._timer.due():
            changed = self.backend.snapshot()
            changed.update({name: None for name in self.known.keys() - changed.keys()})
        if changed:
            out += diff(self.known, changed, self.module)
            for name, rec in changed.items():
                if rec is None:
                    self.known.pop(name, None)
                else:
                    self.known[name] = rec
        return out

    def close(self):
        if self.backend is not None:
            self.backend.close()
