"""One Windows event, whatever brought it: a pywintrace callback's (id, dict), or an Event Log /
.evtx record (the `evtx` package's JSON). The mappers read only this shape."""
from __future__ import annotations

import calendar
import re
import time
from typing import NamedTuple

from ..schema import parse_time
from . import providers
from .fields import module_of

FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units


class WinEvent(NamedTuple):
    provider: str  # the definition's name (etw/*.yaml `provider`), or the record's own
    event_id: int
    ts_ns: int  # Unix ns
    pid: int  # the event header's: the process that logged it (Event Log: the service)
    tid: int
    data: dict  # field name -> value (strings from TDH; typed from .evtx)
    version: int = 0
    channel: str | None = None
    record_id: int | None = None
    computer: str | None = None


def filetime_ns(ft: int) -> int:
    return (int(ft) - FILETIME_EPOCH) * 100


_NOT_ASCII = re.compile(r"[^\x20-\x7e]")
# what .evtx records and Sysmon write: `2017-12-26T13:10:29.136879Z`, `2017-12-26 13:10:29.134`
_UTC = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z?")
_SECONDS: dict[str, int] = {}  # `2017-12-26T13:10:29` -> Unix seconds: a log's records share seconds


def time_ns(value) -> int | None:
    """A time as TDH, Sysmon or the Event Log writes it: FILETIME (an int or its digits), RFC 3339,
    or `2017-12-26 13:10:29.134` (UTC); None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return filetime_ns(value) if value > FILETIME_EPOCH // 2 else None
    s = str(value)
    m = _UTC.fullmatch(s)
    if m is not None:  # the common forms, without datetime
        head, frac = m.groups()
        secs = _SECONDS.get(head)
        if secs is None:
            try:
                secs = calendar.timegm(time.strptime(head.replace(" ", "T"), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:  # month 13 and the like
                return None
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            _SECONDS[head] = secs
        return secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    s = _NOT_ASCII.sub("", s).strip()  # TDH puts left-to-right marks in dates
    if s.isdigit():
        return filetime_ns(int(s))
    try:
        return parse_time(s.replace(" ", "T") + ("" if s.endswith("Z") or "+" in s[10:] else "Z"))
    except ValueError:
        return None


def from_pywintrace(eid: int, ev: dict) -> WinEvent:
    """A pywintrace callback's (event id, event dict); the provider is named by its GUID."""
    header = ev.get("EventHeader") or {}
    desc = header.get("EventDescriptor") or {}
    guid = str(header.get("ProviderId", "")).strip("{}").lower()
    known = providers.by_key().get(guid)
    data = {k: v for k, v in ev.items() if k not in ("EventHeader", "EventExtendedData", "Task Name", "Description")}
    return WinEvent(provider=known.name if known else guid, event_id=int(eid), ts_ns=filetime_ns(header.get("TimeStamp", 0)),
                    pid=int(header.get("ProcessId", 0)), tid=int(header.get("ThreadId", 0)), data=data,
                    version=int(desc.get("Version", 0)))


_NO_ATTRS: dict = {}


def from_evtx(record: dict, record_id: int | None = None) -> WinEvent:
    """One record of `evtx.PyEvtxParser(...).records_json()`, its `data` already parsed;
    `record_id`: the record header's (the crate's `event_record_id`), which wins over the
    System element's EventRecordID (they differ in logs exported from a larger one)."""
    event = record["Event"]
    system = event.get("System") or _NO_ATTRS
    eid = system.get("EventID")
    eid = eid.get("#text") if isinstance(eid, dict) else eid
    data = event.get("EventData")
    if type(data) is not dict:  # absent, or a bare string; UserData holds one element
        user = event.get("UserData")
        data = next(iter(user.values())) if isinstance(user, dict) and user else {}
        data = data if isinstance(data, dict) else {}
    if "#attributes" in data:
        data = {k: v for k, v in data.items() if k != "#attributes"}
    execution = _attrs(system.get("Execution"))
    return WinEvent(_attrs(system.get("Provider")).get("Name") or "", int(eid or 0),
                    time_ns(_attrs(system.get("TimeCreated")).get("SystemTime")) or 0,
                    int(execution.get("ProcessID") or 0), int(execution.get("ThreadID") or 0), data,
                    int(system.get("Version") or 0), system.get("Channel"),
                    system.get("EventRecordID") if record_id is None else record_id,
                    system.get("Computer"))


def _attrs(node) -> dict:
    return (node.get("#attributes") or _NO_ATTRS) if type(node) is dict else _NO_ATTRS


_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"


def from_event_xml(xml: str) -> WinEvent:
    """A live Event Log record as EvtRender(EvtRenderEventXml) gives it: the same WinEvent as the
    .evtx path, with every value a string."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    system = root.find(f"{_NS}System")
    provider, created, execution = (system.find(f"{_NS}{n}") for n in ("Provider", "TimeCreated", "Execution"))
    data = {d.get("Name"): d.text for d in root.iter(f"{_NS}Data") if d.get("Name")}
    return WinEvent(provider=provider.get("Name", "") if provider is not None else "",
                    event_id=int(system.findtext(f"{_NS}EventID") or 0),
                    ts_ns=time_ns(created.get("SystemTime")) or 0 if created is not None else 0,
                    pid=int(execution.get("ProcessID", 0)) if execution is not None else 0,
                    tid=int(execution.get("ThreadID", 0)) if execution is not None else 0, data=data,
                    version=int(system.findtext(f"{_NS}Version") or 0), channel=system.findtext(f"{_NS}Channel"),
                    record_id=int(system.findtext(f"{_NS}EventRecordID") or 0),
                    computer=system.findtext(f"{_NS}Computer"))


def events_of(ev: WinEvent, mapper, table) -> list[dict]:
    """The finished events of one Event Log record: mapped, records through the process cache
    `table`, each with event.module and winlog (winlogbeat's names: channel, ids, provider and
    computer, and the record's own fields as winlog.event_data); a
    record no definition maps stays one event of its own, for service rules."""
    out = []
    for item in mapper.map(ev):
        if type(item) is not dict:
            item = table.handle(item)
            if item is None:
                continue
        out.append(item)
    if mapper.definition(ev) is None:
        out.append({"event": {"kind": "event", "dataset": "winlog", "code": str(ev.event_id)}})
    module = module_of(ev)
    winlog = {"channel": ev.channel, "event_id": ev.event_id, "record_id": ev.record_id, "provider_name": ev.provider,
              "computer_name": ev.computer, "event_data": ev.data}
    for i, event in enumerate(out):
        event["event"]["module"] = module
        event["winlog"] = winlog if i == 0 else dict(winlog)
    return out
