"""SysV init backend of the service inventory: the scripts in /etc/init.d, for hosts where systemd
is not PID 1 (containers, old or small distributions).

What it can know without running the scripts: the LSB header (description), whether the script
is linked into a start runlevel (start mode), and its state from its pid file (PIDFILE=, or
start-stop-daemon's --pidfile, or /run/NAME.pid) or, without one, from a running process whose
executable is its DAEMON=. A script with neither (a one-shot like procps) has state `unknown`:
`service --status-all` would run every script's `status` action, which is too costly (and too
trusting) for a scan every few seconds.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

from ..processes import user_name
from .events import process_figures

SKIP = {"README", "skeleton", "rc", "rcS", "rc.local", "functions"}
START_LEVELS = ("S", "2", "3", "4", "5")  # Debian's default start runlevels
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Z_]+)=(\"[^\"]*\"|'[^']*'|\S*)", re.M)
_PIDFILE_ARG = re.compile(r"--pidfile[= ]+(\"[^\"]*\"|'[^']*'|[^\s;]+)")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def parse_script(path: Path) -> dict:
    """Name, description, DAEMON and pid file of one init script (simple $VAR expansion only)."""
    text = path.read_text(errors="replace")
    env = {"NAME": path.name}

    def expand(value: str) -> str:
        return _VAR.sub(lambda m: env.get(m.group(1), ""), value.strip("\"'"))

    for key, value in _ASSIGN.findall(text):
        env[key] = expand(value)
    header = {}
    m = re.search(r"### BEGIN INIT INFO(.*?)### END INIT INFO", text, re.S)
    for line in (m.group(1) if m else "").splitlines():
        k, _, v = line.lstrip("# ").partition(":")
        if v:
            header[k.strip()] = v.strip()
    pidfile = env.get("PIDFILE")
    if not pidfile:
        arg = _PIDFILE_ARG.search(text)
        pidfile = expand(arg.group(1)) if arg else None
    return {"name": path.name, "description": header.get("Short-Description") or header.get("Description")
            or env.get("DESC"), "daemon": env.get("DAEMON") or None,
            "pidfile": pidfile if pidfile and pidfile != "none" else None}


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SysvBackend:
    type = "sysv"

    def __init__(self, init_dir: str = "/etc/init.d"):
        self.init_dir = Path(init_dir)
        self.rc_root = self.init_dir.parent  # /etc/rc2.d beside /etc/init.d

    def fileno(self):
        return None

    def changes(self):
        return None  # nothing signals: rescanned on the timer

    def close(self):
        pass

    def _scripts(self) -> list[Path]:
        try:
            entries = sorted(self.init_dir.iterdir())
        except OSError:
            return []
        return [p for p in entries if p.name not in SKIP and ".dpkg-" not in p.name and
                p.is_file() and os.access(p, os.X_OK)]

    def _start_mode(self, name: str) -> str:
        for level in START_LEVELS:
            d = self.rc_root / f"rc{level}.d"
            try:
                if any(e.startswith("S") and e[3:] == name for e in os.listdir(d)):  # S01name
                    return "enabled"
            except OSError:
                continue
        return "disabled"

    def snapshot(self) -> dict[str, dict]:
        scripts = [(p, parse_script(p)) for p in self._scripts()]
        by_exe: dict[str, list[int]] = {}
        if any(s["daemon"] and not s["pidfile"] for _, s in scripts):  # only they need the process table
            for proc in psutil.process_iter(["pid", "exe"]):
                if proc.info["exe"]:
                    by_exe.setdefault(proc.info["exe"], []).append(proc.info["pid"])
        return {s["name"]: self._record(p, s, by_exe) for p, s in scripts}

    def _record(self, path: Path, script: dict, by_exe: dict) -> dict:
        rec = {"name": script["name"], "type": "sysv", "description": script["description"],
               "start_mode": self._start_mode(script["name"]), "unit_file": str(path),
               "executable": script["daemon"]}
        declared = script["pidfile"]
        candidates = [declared] if declared else \
            [f"/run/{script['name']}.pid", f"/run/{script['name']}/{script['name']}.pid"]
        pidfile = next((p for p in candidates if os.path.exists(p)), None)
        pid = _read_pid(pidfile) if pidfile else None
        if pid is not None and psutil.pid_exists(pid):
            rec.update(state="running", sub_state="running", pid=pid)
        elif pidfile:  # LSB status 1: "program is dead and the pid file exists"
            rec.update(state="failed", sub_state="dead-pidfile")
        elif declared:  # its own pid file is absent: not started (another copy of the program is not it)
            rec.update(state="stopped", sub_state="dead")
        elif script["daemon"]:
            pids = by_exe.get(os.path.realpath(script["daemon"]), [])
            if pids:
                rec.update(state="running", sub_state="running", pid=min(pids))
            else:
                rec.update(state="stopped", sub_state="dead")
        else:
            rec.update(state="unknown")
        if rec.get("pid"):
            self._process(rec)
        return rec

    def _process(self, rec: dict):
        try:
            p = psutil.Process(rec["pid"])
            with p.oneshot():
                rec["executable"] = p.exe() or rec["executable"]
                rec["command_line"] = " ".join(p.cmdline()) or None
                rec["user"] = user_name(p.uids().effective)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        rec.update(process_figures(rec["pid"]))
