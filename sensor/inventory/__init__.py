"""Host inventory as change events: processes, services, users and logins. Each source sends a
snapshot at start, then only what changed (see docs/schema.md)."""
from __future__ import annotations

from .logins import LoginInventory
from .processes import ProcessInventory
from .services import ServiceInventory

__all__ = ["LoginInventory", "ProcessInventory", "ServiceInventory", "build"]


def build(cfg) -> list:
    """The inventory sources the config asks for, not yet started."""
    interval = cfg["inventory.interval"]
    sources = []
    if cfg["inventory.processes"]:
        sources.append(ProcessInventory(interval, cfg["inventory.io_threshold"], cfg["inventory.memory_threshold"]))
    if cfg["services.enabled"]:
        sources.append(ServiceInventory(interval, cfg["services.backend"], cfg["services.init_dir"]))
    if cfg["logins.enabled"]:
        sources.append(LoginInventory(interval, cfg["logins.auth_log"], wtmp=cfg["logins.wtmp"]))
    return sources
