"""The Windows backend's half of sensor.backend: which ETW and Event Log sources a config asks
for, what replaces one that cannot start, and the Windows inventory feeds."""
from __future__ import annotations

import logging
import time

from .. import portable

log = logging.getLogger("sensor.windows")

# The original collector's key directories: watched by the file source here.
WATCH_PATHS = [r"C:\Users", r"C:\ProgramData\Microsoft\Windows\Start Menu\Programs", r"C:\Windows\Temp",
               r"C:\Windows\Tasks", r"C:\Windows\System32\Tasks", r"C:\Windows\System32", r"C:\Windows\SysWOW64",
               r"C:\Windows\WinSxS"]


def build_sources(cfg, blocked=None) -> list:
    """The sources the config asks for, not yet started. `blocked` is honoured after the fact:
    Windows has no in-kernel exec hook for us, so a blocked image is killed at its process start."""
    sources = []
    if cfg["process.enabled"]:
        sources.append(portable.process_source(cfg))
    if cfg["files.enabled"]:
        sources.append(portable.file_source(cfg, WATCH_PATHS))
    for name in ("network", "security", "packets"):
        if cfg[f"{name}.enabled"]:
            log.info("%s events: no Windows source", name)
    return sources + portable.common_sources(cfg)


def fallback(source, reason: str, cfg):
    """The portable backend for an ETW source that could not start (not elevated, session
    limit reached); None to run without it; raises LookupError when the error must stand."""
    if source.name == "process" and cfg["process.backend"] == "auto":
        log.warning("ETW process tracing unavailable (%s); falling back to psutil polling every %ss: "
                    "short-lived processes may be missed, exit codes are unknown", reason,
                    cfg["process.poll_interval"])
        return portable.process_source(cfg)
    if source.name == "file" and cfg["files.backend"] == "auto":
        log.warning("ETW file monitoring unavailable (%s); falling back to watchdog on the key "
                    "directories: file events without the acting process", reason)
        return portable.file_source(cfg, WATCH_PATHS)
    if source.name in ("network", "registry", "dns", "eventlog"):
        log.warning("ETW %s monitoring unavailable (%s): no %s events", source.name, reason, source.name)
        return None
    raise LookupError(source.name)


def service_backend(backend: str = "auto", init_dir: str = "", bus: str = ""):
    from .services import WindowsBackend

    return WindowsBackend()


def login_feed(auth_log: str):
    """Security and System event log records (pywin32); None without pywin32."""
    try:
        from .logins import EventLogFollower

        return EventLogFollower()
    except ImportError as exc:
        log.warning("logins: Windows event logs unreadable (%s: pywin32 missing); sessions only", exc)
        return None


class _Sleeper:
    """What the pipeline waits on here: Windows sources hand records over from ETW's own threads
    and have no descriptor a select() could watch, so the wait is a plain sleep."""

    def register(self, fd: int):
        pass

    def poll(self, timeout: float = -1):
        time.sleep(max(timeout, 0.0))
        return []

    def close(self):
        pass


def poller():
    return _Sleeper()
