"""Windows backend of the service inventory: the service control manager through psutil
(`win_service_iter`, `as_dict`). `decode` is platform-free and tested on recorded values; only
`WindowsBackend.snapshot` needs Windows."""
from __future__ import annotations

import re

import psutil

from ..inventory.events import process_figures

# psutil's status strings in the inventory's shared vocabulary (`sub_state` keeps the native one)
STATES = {"running": "running", "stopped": "stopped", "paused": "paused", "start_pending": "starting",
          "stop_pending": "stopping", "continue_pending": "starting", "pause_pending": "stopping"}
_EXE = re.compile(r'^\s*"([^"]+)"|^\s*(.+?\.exe)(?=\s|$)|^\s*(\S+)', re.I)


def executable(binpath: str | None) -> str | None:
    """The program of a service's command line: quoted, else up to `.exe` (unquoted paths with
    spaces are common: C:\\Program Files\\Vendor\\svc.exe -k), else the first word."""
    if not binpath:
        return None
    m = _EXE.match(binpath)
    return next((g for g in m.groups() if g), None) if m else None


def decode(d: dict) -> dict:
    """One `WindowsService.as_dict()` as an inventory record."""
    status = d.get("status") or "unknown"
    return {"name": d["name"], "type": "windows", "state": STATES.get(status, status), "sub_state": status,
            "start_mode": d.get("start_type") or None, "display_name": d.get("display_name") or None,
            "description": d.get("description") or None, "pid": d.get("pid") or None,
            "executable": executable(d.get("binpath")), "command_line": d.get("binpath") or None,
            "user": d.get("username") or None}


class WindowsBackend:
    type = "windows"

    def fileno(self):
        return None

    def changes(self):
        return None  # the SCM has notifications, but not through psutil: rescanned on the timer

    def close(self):
        pass

    def snapshot(self) -> dict[str, dict]:
        out = {}
        for svc in psutil.win_service_iter():
            try:
                rec = decode(svc.as_dict())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # deleted while listed, or not ours to query
            if rec["pid"]:
                rec.update(process_figures(rec["pid"]))
            out[rec["name"]] = rec
        return out
