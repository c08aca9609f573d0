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
    """The sources the config asks for, not yet started: an ETW session per provider in etw/,
    the Event Log channels, and the portable ones where asked. `blocked` is honoured after the
    fact: Windows gives no hook before an image runs, so a blocked image dies at its start event."""
    from .etw import EtwSource
    from .eventlog import EventLogSource
    from .mappers import Mapper
    from .providers import load
    from .starts import Starts

    p = load()
    starts = Starts()  # a process that ETW and the Event Log both report starts once
    mapper = Mapper(None, starts=starts)  # one for all sessions: the kernel logger's command lines join Kernel-Process starts
    sources = []
    if cfg["process.enabled"]:
        if cfg["process.backend"] == "psutil":
            sources.append(portable.process_source(cfg))
        else:
            sources += [EtwSource("process", [p["Microsoft-Windows-Kernel-Process"]], mapper),
                        EtwSource("process.command_line", [p["Windows Kernel Trace"]], mapper)]
        # Sysmon and Security 4688, where they are on; its own mapper: no ETW join to wait for
        sources.append(EventLogSource(Mapper(None, starts=starts)))
    if cfg["files.enabled"]:
        if cfg["files.backend"] == "watchdog":
            sources.append(portable.file_source(cfg, WATCH_PATHS))
        else:
            sources.append(EtwSource("file", [p["Microsoft-Windows-Kernel-File"]], mapper, paths=WATCH_PATHS))
    if cfg["network.enabled"]:
        sources += [EtwSource("network", [p["Microsoft-Windows-Kernel-Network"]], mapper),
                    EtwSource("network.dns", [p["Microsoft-Windows-DNS-Client"]], mapper)]
    if cfg["security.enabled"]:
        sources.append(EtwSource("registry", [p["Microsoft-Windows-Kernel-Registry"]], mapper))
    if cfg["packets.enabled"]:
        log.info("packets: no Windows source (AF_PACKET is Linux's)")
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
    if source.name in ("process.command_line", "network", "network.dns", "registry", "eventlog", "host.services"):
        log.warning("%s unavailable (%s): running without it", source.name, reason)
        return None
    raise LookupError(source.name)


def service_backend(backend: str = "auto", init_dir: str = "", bus: str = ""):
    import psutil

    from ..errors import SensorError
    from .services import WindowsBackend

    if not hasattr(psutil, "win_service_iter"):  # psutil's own platform split: Windows builds only
        raise SensorError("services: this psutil has no Windows service manager API")
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


def rule_set():
    """The RuleSet class `sensor run` loads its Sigma rules with: Windows rules go through the
    Sysmon/Security field-name pipeline (sensor.windows.sigma), Linux rules as on Linux."""
    from .sigma import WindowsRuleSet

    return WindowsRuleSet
