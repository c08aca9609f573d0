"""The ETW provider and Event Log channel definitions in etw/*.yaml, loaded once: GUIDs,
keywords, event ids, and which field of which event fills which record field."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import yaml

# a source tree keeps them in the top-level etw/ (as bpf/ beside sensor/); setup.py copies them into
# the wheel as package data, sensor/data/etw
DIRS = (Path(__file__).resolve().parent.parent.parent / "etw", files("sensor") / "data" / "etw")

# record kind -> the record fields a definition may fill (the mappers' vocabulary)
RECORD_FIELDS = {
    "process_start": {"pid", "ppid", "start", "image", "command_line", "cwd", "user", "user_sid", "domain",
                      "logon_id", "session", "integrity", "hashes", "guid", "parent_guid", "parent_image",
                      "parent_command_line", "sequence", "original_file_name", "product", "company", "description"},
    "process_command_line": {"pid", "ppid", "command_line", "user_sid", "name"},
    "process_end": {"pid", "start", "end", "exit_code", "image"},
    "file": {"pid", "tid", "image", "path", "user"},
    "network": {"pid", "image", "user", "transport", "initiated", "saddr", "sport", "shost", "daddr", "dport", "dhost",
                "size"},
    # Sysmon 6-10, 17/18 and PowerShell 4103/4104: built in sensor.windows.activity
    "image_load": {"pid", "image", "user", "path", "file_version", "description", "product", "company",
                   "original_file_name", "hashes", "signed", "signature", "signature_status"},
    "driver_load": {"path", "hashes", "signed", "signature", "signature_status"},
    "process_access": {"pid", "tid", "image", "user", "target_pid", "target_image", "target_user", "target_tid",
                       "granted_access", "call_trace", "start_address", "start_module", "start_function"},
    "raw_access": {"pid", "image", "user", "device"},
    "pipe": {"pid", "image", "user", "name"},
    "ps_script": {"text", "id", "number", "total", "path"},
    "ps_module": {"context", "payload"},
    "dns": {"pid", "image", "user", "name", "type", "status", "results"},
    "registry": {"pid", "image", "user", "event_type", "base", "key", "value", "type", "data", "status"},
    "logon": {"user_sid", "user", "domain", "logon_id", "logon_type", "logon_process", "package", "workstation",
              "pid", "image", "ip", "port", "status", "sub_status", "reason"},
    "service_install": {"name", "image", "type", "start_type", "account"},
}


@dataclass(frozen=True)
class EventDef:
    id: int
    name: str
    record: str  # a key of RECORD_FIELDS: which mapper, and so which builder, it goes through
    fields: tuple[str, ...]  # the event's own field names (manifest, or Event Log EventData)
    map: dict  # record field -> event field
    extra: dict = field(default_factory=dict)  # op, transport, rundown, failed: fixed per event


@dataclass(frozen=True)
class Provider:
    name: str
    guid: str
    source: str  # etw (a real-time session) or eventlog (a channel)
    events: dict  # event id -> EventDef
    file: str
    session: str | None = None
    channel: str | None = None
    level: int = 4
    keywords: dict = field(default_factory=dict)  # name -> bit
    enable: tuple[str, ...] = ()

    @property
    def any_keywords(self) -> int:
        """The keyword mask the sensor enables: only what its mappers use."""
        mask = 0
        for name in self.enable:
            mask |= self.keywords[name]
        return mask


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where built with it


def _provider(path) -> Provider:
    d = yaml.load(path.read_text(), Loader=_LOADER)
    events = {}
    for eid, e in (d.get("events") or {}).items():
        extra = {k: v for k, v in e.items() if k not in ("name", "record", "fields", "map")}
        events[int(eid)] = EventDef(int(eid), e["name"], e["record"], tuple(e["fields"]), dict(e.get("map") or {}),
                                    extra)
    return Provider(name=d["provider"], guid=d["guid"].strip("{}").lower(), source=d["source"], events=events,
                    file=path.name, session=d.get("session"), channel=d.get("channel"), level=d.get("level", 4),
                    keywords=dict(d.get("keywords") or {}), enable=tuple(d.get("enable") or ()))


@lru_cache(maxsize=None)
def load() -> dict[str, Provider]:
    """Every definition, by provider name."""
    for d in DIRS:
        if d.is_dir():
            return {p.name: p for p in map(_provider, sorted((f for f in d.iterdir() if f.name.endswith(".yaml")),
                                                             key=lambda f: f.name))}
    raise FileNotFoundError(f"ETW definitions not found in {' or '.join(map(str, DIRS))}")


@lru_cache(maxsize=None)
def by_key() -> dict:
    """Definitions by lowercased provider name, by GUID, and by Event Log channel."""
    out = {}
    for p in load().values():
        out[p.name.lower()] = out[p.guid] = p
        if p.channel:
            out[p.channel.lower()] = p
    return out
