"""Windows logons from the event logs: Security 4624 (logon), 4625 (failed logon), 4672 (special
privileges assigned to a new logon) and System 7045 (a service was installed), decoded into the
same schema as Linux logins and services. `parse_event_xml` and `decode` are platform-free and
tested on recorded records; `EventLogFollower` (pywin32) only runs on Windows."""
from __future__ import annotations

import ntpath
import xml.etree.ElementTree as ET

from ..schema import parse_time, rfc3339
from ..inventory.events import inventory_event, without_none

LOGON_TYPES = {2: "interactive", 3: "network", 4: "batch", 5: "service", 7: "unlock",
               8: "network_cleartext", 9: "new_credentials", 10: "remote_interactive",
               11: "cached_interactive", 12: "cached_remote_interactive", 13: "cached_unlock"}
# 4625 Status/SubStatus, the codes Microsoft documents for failed logons
FAILURES = {0xC0000064: "no such user", 0xC000006A: "wrong password", 0xC000006D: "bad user name or password",
            0xC000006E: "account restriction", 0xC000006F: "outside authorized hours",
            0xC0000070: "workstation not allowed", 0xC0000071: "password expired",
            0xC0000072: "account disabled", 0xC00000DC: "SAM server in wrong state",
            0xC0000133: "clock skew too great", 0xC000015B: "logon type not granted",
            0xC0000193: "account expired", 0xC0000224: "password must change",
            0xC0000234: "account locked out", 0xC000005E: "no logon servers"}
START_TYPES = {"auto start": "automatic", "demand start": "manual", "disabled": "disabled",
               "boot start": "boot", "system start": "system"}
QUERIES = {"Security": "*[System[(EventID=4624 or EventID=4625 or EventID=4672)]]",
           "System": "*[System[Provider[@Name='Service Control Manager'] and (EventID=7045)]]"}
_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"


def parse_event_xml(xml: str) -> dict:
    """A rendered event (EvtRender XML) as {EventID, TimeCreated, Computer, Channel, EventRecordID,
    EventData: {Name: value}}, the shape the decoder and the recorded fixtures use."""
    root = ET.fromstring(xml)
    system = root.find(f"{_NS}System")
    created = system.find(f"{_NS}TimeCreated")
    return {"EventID": int(system.findtext(f"{_NS}EventID")),
            "TimeCreated": created.get("SystemTime") if created is not None else None,
            "Computer": system.findtext(f"{_NS}Computer"), "Channel": system.findtext(f"{_NS}Channel"),
            "EventRecordID": int(system.findtext(f"{_NS}EventRecordID") or 0),
            "EventData": {d.get("Name"): d.text for d in root.iter(f"{_NS}Data")}}


def _v(value) -> str | None:
    """Event log placeholders for "none" ("-", "", "0x0", "S-1-0-0") as absent."""
    return None if value in (None, "", "-", "S-1-0-0") else value


def _hex(value) -> int | None:
    try:
        return int(value, 16) if _v(value) else None
    except ValueError:
        return None


def _logon(d: dict, record: dict) -> dict:
    logon_type = int(d["LogonType"]) if d.get("LogonType", "").isdigit() else None
    exe = _v(d.get("ProcessName"))
    port = d.get("IpPort")
    return {"user": {"name": _v(d.get("TargetUserName")), "domain": _v(d.get("TargetDomainName")),
                     "id": _v(d.get("TargetUserSid"))},
            "source": {"ip": _v(d.get("IpAddress")), "port": int(port) if port and port.isdigit() and port != "0" else None,
                       "domain": _v(d.get("WorkstationName"))},
            "process": {"pid": _hex(d.get("ProcessId")) or None, "executable": exe,
                        "name": ntpath.basename(exe) if exe else None},
            "auth": {"logon_type": LOGON_TYPES.get(logon_type, logon_type), "logon_id": _v(d.get("TargetLogonId")),
                     "package": _v(d.get("AuthenticationPackageName")),
                     "logon_process": (_v(d.get("LogonProcessName")) or "").strip() or None}}


def decode(record: dict) -> dict | None:
    """One recorded event (parse_event_xml's shape) as a schema event, or None if not ours."""
    from ..inventory.services import service_event

    eid, d = record["EventID"], record.get("EventData") or {}
    if eid in (4624, 4625):
        fields = _logon(d, record)
        ev = inventory_event("host.logins", "logon", ["authentication"], ["start"], module="winlog", **fields)
        ev["event"]["outcome"] = "success" if eid == 4624 else "failure"
        if eid == 4625:
            code = _hex(d.get("SubStatus")) or _hex(d.get("Status"))
            ev["event"]["reason"] = FAILURES.get(code, d.get("FailureReason"))
            ev["auth"].update(status=_v(d.get("Status")), sub_status=_v(d.get("SubStatus")))
    elif eid == 4672:
        ev = inventory_event("host.logins", "special-privileges-assigned", ["iam"], ["admin"], module="winlog",
                             user={"name": _v(d.get("SubjectUserName")), "domain": _v(d.get("SubjectDomainName")),
                                   "id": _v(d.get("SubjectUserSid"))},
                             auth={"logon_id": _v(d.get("SubjectLogonId")),
                                   "privileges": (d.get("PrivilegeList") or "").split()})
    elif eid == 7045:
        from .services import executable

        image = _v(d.get("ImagePath"))
        ev = service_event("added", {
            "name": d.get("ServiceName"), "type": "windows", "code": "7045",
            "start_mode": START_TYPES.get((d.get("StartType") or "").lower(), _v(d.get("StartType"))),
            "executable": executable(image), "command_line": image, "user": _v(d.get("AccountName"))},
            module="winlog")
        ev["service"]["kind"] = _v(d.get("ServiceType"))
    else:
        return None
    ev["event"]["code"] = str(eid)
    if record.get("TimeCreated"):
        ev["event"]["start"] = rfc3339(parse_time(record["TimeCreated"]))
    return without_none(ev)


class EventLogFollower:
    """New records of the channels in QUERIES, read forward from the newest at start (pywin32)."""

    def __init__(self):
        import win32evtlog  # noqa: F401  (ImportError: no pywin32, the caller warns)

        self._evt = win32evtlog
        self._last = {ch: self._newest(ch) for ch in QUERIES}

    def _newest(self, channel: str) -> int:
        h = self._evt.EvtQuery(channel, self._evt.EvtQueryReverseDirection, QUERIES[channel])
        for e in self._evt.EvtNext(h, 1):
            return parse_event_xml(self._evt.EvtRender(e, self._evt.EvtRenderEventXml))["EventRecordID"]
        return 0

    def events(self) -> list[dict]:
        out = []
        for channel, query in QUERIES.items():
            q = query[:-1] + f" and System[EventRecordID>{self._last[channel]}]]"
            h = self._evt.EvtQuery(channel, self._evt.EvtQueryForwardDirection, q)
            while batch := self._evt.EvtNext(h, 64):
                for e in batch:
                    rec = parse_event_xml(self._evt.EvtRender(e, self._evt.EvtRenderEventXml))
                    self._last[channel] = max(self._last[channel], rec["EventRecordID"])
                    ev = decode(rec)
                    if ev is not None:
                        out.append(ev)
        return out

    def close(self):
        pass
