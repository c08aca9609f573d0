"""The Linux backend's half of sensor.backend: which eBPF sources a config asks for, what replaces
one that cannot start, and the Linux inventory feeds."""
from __future__ import annotations

import logging
import os
import select
import shutil

from .. import portable
from ..portable import items
from ..source import SHARED_MAPS, having

log = logging.getLogger("sensor.linux")


def build_sources(cfg, blocked=None) -> list:
    """The sources the config asks for, not yet started; `blocked`: the (dev, inode, path) of
    files a block-exec policy lists, or None without one."""
    sources = []
    if cfg["process.enabled"]:
        opts = cfg.section("process")
        if opts["backend"] == "psutil":
            sources.append(portable.process_source(cfg))
        else:
            from .process import ProcessSource

            sources.append(ProcessSource(ring_buffer_bytes=opts["ring_buffer_bytes"],
                                         threads=opts["threads"], wakeup_bytes=opts["wakeup_bytes"],
                                         blocked=list(blocked or ())))
    # the file, network and security sources share one object, which shares maps with the process
    # programs (the sensor's pids, written files)
    shared_activity = []

    def activity():
        if not shared_activity:
            from .activity import Activity

            shared = next((s.shared_maps for s in having(sources, SHARED_MAPS)), None)
            shared_activity.append(Activity(shared))
        return shared_activity[0]

    if cfg["files.enabled"] and cfg["files.backend"] == "watchdog":
        sources.append(portable.file_source(cfg, items(cfg["files.paths"])))
    elif cfg["files.enabled"]:
        from .file import FileSource

        sources.append(FileSource(activity(), items(cfg["files.paths"]),
                                  items(cfg["files.exclude"]) + [cfg["data_dir"]],
                                  ring_buffer_bytes=cfg["files.ring_buffer_bytes"],
                                  write_interval=cfg["files.write_interval"]))
    if cfg["network.enabled"]:
        from .net import NetSource

        sources.append(NetSource(activity(), ring_buffer_bytes=cfg["network.ring_buffer_bytes"],
                                 flow_interval=cfg["network.flow_interval"]))
    if cfg["security.enabled"]:
        from .security import SecuritySource

        sources.append(SecuritySource(activity()))
    if blocked is not None and having(sources, SHARED_MAPS):
        from .block import BlockSource  # a blocked script dies opening it

        sources.append(BlockSource(activity(), blocked))
    if cfg["packets.enabled"]:
        from ..packets import PacketSource

        sources.append(PacketSource(cfg["packets.interface"], cfg["packets.per_second"]))
    return sources + portable.common_sources(cfg)


def fallback(source, reason: str, cfg):
    """The portable backend for a kernel source that could not start (no BTF, no root, no
    tracefs), when its backend is `auto`; None to run without it; raises LookupError when the
    error must stand."""
    if source.name == "process" and cfg["process.backend"] == "auto":
        log.warning("eBPF process tracing unavailable (%s); falling back to psutil polling every "
                    "%ss: short-lived processes may be missed, exit codes are unknown, nothing is "
                    "blocked in the kernel", reason, cfg["process.poll_interval"])
        return portable.process_source(cfg)
    if source.name == "file" and cfg["files.backend"] == "auto":
        log.warning("eBPF file monitoring unavailable (%s); falling back to watchdog: file events "
                    "without the acting process, chmod reported as a write", reason)
        return portable.file_source(cfg, items(cfg["files.paths"]))
    if source.name in ("network", "security"):
        log.warning("eBPF %s monitoring unavailable (%s): no %s events", source.name, reason, source.name)
        return None
    raise LookupError(source.name)


def service_backend(backend: str = "auto", init_dir: str = "/etc/init.d", bus: str = "SYSTEM"):
    from ..inventory.services import open_backend

    return open_backend(backend, init_dir, bus)


def login_feed(auth_log: str):
    """Where authentication records come from: the journal when journald runs, else the syslog file."""
    from ..inventory.authlog import FileFollower, JournalFollower

    if os.path.exists("/run/systemd/journal/socket") and shutil.which("journalctl"):
        return JournalFollower(shutil.which("journalctl"))
    if not os.path.exists(auth_log):
        log.warning("logins: no journald and no %s (no syslog daemon writes it?); following it once it "
                    "appears, sessions from utmp meanwhile", auth_log)
    return FileFollower(auth_log)


class _Epoll:
    """What the pipeline waits on: the sources' descriptors, readable, in one epoll."""

    def __init__(self):
        self._ep = select.epoll()
        self.poll, self.close = self._ep.poll, self._ep.close

    def register(self, fd: int):
        self._ep.register(fd, select.EPOLLIN)


def poller() -> _Epoll:
    return _Epoll()


def rule_set():
    """The RuleSet class `sensor run` loads its Sigma rules with: SigmaHQ's Linux field names."""
    from ..rules import RuleSet

    return RuleSet
