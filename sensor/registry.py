"""Registry events in the schema: the one place RegistryChange records become `event.dataset:
registry` events (ECS registry.*, paths as Sysmon writes them: HKLM\\..., HKU\\...)."""
from __future__ import annotations

from .records import RegistryChange

# op -> event.type
OPS = {"create-key": ["creation"], "delete-key": ["deletion"], "set-value": ["change"], "delete-value": ["deletion"]}


def registry_event(r: RegistryChange, table) -> dict:
    hive, _, key = r.key.partition("\\")
    registry = {"hive": hive, "key": key, "path": f"{r.key}\\{r.value}" if r.value is not None else r.key}
    if r.value is not None:
        registry["value"] = r.value
    if r.data is not None or r.data_type is not None:
        registry["data"] = {k: v for k, v in (("strings", [r.data] if r.data is not None else None),
                                               ("type", r.data_type)) if v is not None}
    return {"event": {"kind": "event", "category": ["registry"], "type": OPS[r.op], "action": r.op,
                      "dataset": "registry", "module": "etw"},
            "registry": registry, **table.actor(r.pid, r.start_ns, r.tid, r.comm)}
