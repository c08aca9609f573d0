"""The portable sources (psutil polling, watchdog), which any platform backend builds where its
kernel source is not asked for or cannot start."""
from __future__ import annotations


def items(spec: str | None) -> list[str]:
    """A comma-separated option as a list."""
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def process_source(cfg):
    from .polling import PollingProcessSource

    return PollingProcessSource(cfg["process.poll_interval"])


def file_source(cfg, paths: list[str]):
    from .watch import WatchdogFileSource

    return WatchdogFileSource(paths, items(cfg["files.exclude"]) + [cfg["data_dir"]],
                              coalesce_seconds=cfg["files.write_interval"])


def common_sources(cfg) -> list:
    """What every platform runs the same way: host metrics and the inventory."""
    sources = []
    if cfg["metrics.enabled"]:
        from .metrics import MetricsSource

        sources.append(MetricsSource(interval=cfg["metrics.interval"]))
    from .inventory import build as build_inventory

    return sources + build_inventory(cfg)
