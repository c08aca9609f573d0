"""Windows events (ETW, Event Log, .evtx) into the records and events Linux makes, through the
same builders: process starts and ends through the process cache, file events through
sensor.files, connections through sensor.network, the kinds Linux has no record for through
sensor.windows.activity. Which field fills what: etw/*.yaml."""
from __future__ import annotations

import ipaddress
import logging
import ntpath
import re
from collections import OrderedDict
from functools import lru_cache

from ..processes import Proc, ProcessTable
from ..schema import rfc3339
from ..records import DnsLookup, FileActivity, NetActivity, ProcessExec, ProcessExit, RegistryChange
from . import activity
from .fields import ABSENT as _ABSENT, account, basename, hashes, module_of, number as _int  # noqa: F401 (module_of: API)
from .paths import Drives, registry_path
from .providers import EventDef, load
from .starts import Starts
from .winevent import WinEvent, time_ns

log = logging.getLogger("sensor.windows")

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS", 255: "ANY"}
REG_TYPES = {0: "REG_NONE", 1: "REG_SZ", 2: "REG_EXPAND_SZ", 3: "REG_BINARY", 4: "REG_DWORD", 5: "REG_DWORD_BIG_ENDIAN",
             6: "REG_LINK", 7: "REG_MULTI_SZ", 11: "REG_QWORD"}
# Sysmon 12's EventType -> our op
SYSMON_REGISTRY = {"CreateKey": "create-key", "DeleteKey": "delete-key", "DeleteValue": "delete-value",
                   "SetValue": "set-value"}
SERVICE_START_TYPES = {"0": "boot start", "1": "system start", "2": "auto start", "3": "demand start", "4": "disabled"}


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode("utf-8", "surrogateescape")


# a command line's pieces: backslashes then a quote, blanks, and the rest (backslashes alone are literal)
_TOKENS = re.compile(r'(\\*)"|([ \t]+)|([^ \t"\\]+|\\+)')
_BLANKS = re.compile(r"[ \t]+")


def split_command_line(cmd: str) -> list[str]:
    """argv as the C runtime parses a Windows command line (CommandLineToArgvW's rules: quotes
    group, 2n backslashes before a quote are n and the quote counts, 2n+1 are n and a literal quote)."""
    if '"' not in cmd:  # no quotes: backslashes are literal, blanks separate
        cmd = cmd.strip(" \t")
        return _BLANKS.split(cmd) if cmd else []
    args, cur, quoted, have = [], [], False, False
    for slashes, blanks, other in _TOKENS.findall(cmd):
        if other:
            cur.append(other)
            have = True
        elif blanks:
            if quoted:
                cur.append(blanks)
            elif have:
                args.append("".join(cur))
                cur, have = [], False
        else:  # n backslashes and a quote
            cur.append("\\" * (len(slashes) // 2))
            if len(slashes) % 2:
                cur.append('"')
            else:
                quoted = not quoted
            have = True
    if have:
        args.append("".join(cur))
    return args


def _account(v: dict) -> tuple:
    return account(v.get("user_sid"), v.get("user"), v.get("domain"))


class Mapper:
    """Turns WinEvents into records (for `table.handle`) and finished events (logons, service
    installs). Kernel-Process starts wait up to `join_seconds` for the NT Kernel Logger's start of
    the same process, which has the command line (osquery joins them the same way)."""

    def __init__(self, table: ProcessTable | None, drives: Drives | None = None, join_seconds: float = 1.0,
                 starts: Starts | None = None):
        """`table`: the process cache the records will reach, which `known` fills ahead of them;
        None where another owns it (live sources: the pipeline's). `starts`: the process starts
        other sources reported (sensor.windows.starts), so a process gets one exec event."""
        self.table, self.drives, self.starts = table, drives or Drives(), starts
        self.join_ns = int(join_seconds * 1e9)
        self.defs = {(p.name.lower(), eid): e for p in load().values() for eid, e in p.events.items()}
        self._starts: OrderedDict[tuple, tuple] = OrderedDict()  # (pid, ppid) -> (ProcessExec fields, deadline)
        self._command_lines: OrderedDict[tuple, tuple] = OrderedDict()  # (pid, ppid) -> (cmd, sid, expiry)
        self._defs: dict[tuple, EventDef | None] = {}  # (provider as written, event id) -> definition
        self.unknown = 0  # events no definition names

    def definition(self, ev: WinEvent) -> EventDef | None:
        key = (ev.provider, ev.event_id)
        try:
            return self._defs[key]
        except KeyError:  # a provider spelled as the record spells it, looked up once
            d = self._defs[key] = self.defs.get((ev.provider.lower(), ev.event_id))
            return d

    def map(self, ev: WinEvent) -> list:
        out = self.flush(ev.ts_ns) if self._starts or self._command_lines else []
        d = self.definition(ev)
        if d is None:
            self.unknown += 1
            return out
        data = ev.data
        v = {k: x for k, f in d.map.items() if (x := data.get(f)) is not None and x not in _ABSENT}
        return out + MAPPERS[d.record](self, ev, d, v)

    def flush(self, now_ns: int | None = None) -> list:
        """Starts whose command line did not come in time (all of them with `now_ns` None)."""
        out = []
        while self._starts:
            key, (rec, deadline) = next(iter(self._starts.items()))
            if now_ns is not None and deadline > now_ns:
                break
            del self._starts[key]
            out.append(ProcessExec(**rec))
        while self._command_lines and (now_ns is None or next(iter(self._command_lines.values()))[2] <= now_ns):
            self._command_lines.popitem(last=False)
        return out

    # what a process looks like to the cache before its own start was seen
    def known(self, pid: int | None, image: str | None, command_line: str | None = None,
              start_ns: int = 0, user: tuple = ()) -> Proc | None:
        """The cached process `pid`, created from what an event says of it when the cache has
        none (a Sysmon parent, the actor of a file event): rules read its image and user."""
        if pid is None or self.table is None:
            return None
        proc = self.table.live.get(pid)
        if proc is None and image:
            proc = Proc(pid, start_ns, self.table.host.entity_id(pid, start_ns))
            cmd = command_line or image
            proc.set_image(image, split_command_line(cmd), None, command_line=cmd)
            if user:
                proc.account = dict(user)
            self.table.live[pid] = proc
        return proc

    def _pid(self, ev: WinEvent, v: dict) -> int:
        pid = _int(v.get("pid"))
        return ev.pid if pid is None else pid

    def _actor(self, ev: WinEvent, v: dict) -> tuple[int, bytes]:
        pid = self._pid(ev, v)
        image = self.drives.path(v.get("image"))
        self.known(pid, image, user=_account(v))
        return pid, _b(basename(image))[:15] if image else b""

    def actor(self, ev: WinEvent, v: dict) -> dict:
        """`process`, `user` of the process an event names, for events built here: the cache's
        view where this mapper has the cache (hunt), else what the event says (live)."""
        pid, comm = self._actor(ev, v)
        tid = _int(v.get("tid")) or (ev.tid if pid == ev.pid else 0)
        return self.process(pid, self.drives.path(v.get("image")), _account(v), tid, comm)

    def process(self, pid: int | None, image: str | None, user: tuple, tid: int = 0, comm: bytes = b"") -> dict:
        if pid is None:
            return {}
        if self.table is not None:
            self.known(pid, image, user=user)
            out = self.table.actor(pid, None, tid, comm or (_b(basename(image))[:15] if image else b""))
            parent = self.table.live.get(out["process"].get("parent", {}).get("pid"))
            if parent is not None and parent.executable:  # SigmaHQ's SourceParentImage
                out["process"]["parent"]["executable"] = parent.executable
            if user:  # the event's own word on its actor's account (Sysmon's User, SourceUser)
                out["user"] = dict(user)
            return out
        process = {"pid": pid, **({"executable": image, "name": basename(image)} if image else {}),
                   **({"thread": {"id": tid}} if tid else {})}
        return {"process": process, "user": dict(user)}


def _process_start(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    pid, ppid = _int(v.get("pid")), _int(v.get("ppid")) or 0
    if pid is None:
        return []
    image = m.drives.path(v.get("image"))
    start = time_ns(v.get("start")) or ev.ts_ns
    parent_image = m.drives.path(v.get("parent_image"))
    if ppid and parent_image:
        m.known(ppid, parent_image, v.get("parent_command_line"))
    if d.extra.get("rundown"):  # already running when the session started: the cache's seed, no event
        proc = m.known(pid, image, None, start)
        if proc is not None:
            proc.ppid = ppid
        return []
    cmd = v.get("command_line")
    if m.starts is not None and not m.starts.first(pid, start):  # another source reported it first
        _merge(m, pid, start, v)
        return []
    args = split_command_line(cmd) if cmd else []
    info = tuple([(k, v[f]) for k, f in _PE if f in v])  # v holds no absent values
    if "hashes" in v:
        info += _hash_info(v["hashes"])
    exe = _b(image) or b""
    fields = dict(ts_ns=ev.ts_ns, pid=pid, tid=ev.tid if ev.pid == pid else 0, ppid=ppid, start_ns=start,
                  parent_start_ns=0, uid=None, gid=None, euid=None, egid=None, argc=len(args),
                  args=tuple(map(_b, args)), filename=exe, executable=exe or None, cwd=_b(v.get("cwd")),
                  comm=_b(basename(image or ""))[:15], command_line=_b(cmd), account=_account(v),
                  image_info=info)
    if cmd is not None or ev.channel is not None:
        return [ProcessExec(**fields)]
    key = (pid, ppid)  # Kernel-Process: its command line comes from the kernel logger
    joined = m._command_lines.pop(key, None)
    if joined is not None:
        return [_with_command_line(fields, joined[0], joined[1])]
    m._starts[key] = (fields, ev.ts_ns + m.join_ns)
    return []


def _merge(m: Mapper, pid: int, start: int, v: dict):
    """What a repeated report of a cached process adds to it: a working directory, account names
    (Sysmon's beside ETW's SID); its exec event has gone out already."""
    proc = m.table.live.get(pid) if m.table is not None else None
    if proc is None or abs(proc.start_ns - start) > m.starts.window_ns:
        return
    cwd = m.drives.path(v.get("cwd"))
    if cwd and proc.cwd is None:
        proc.set_image(proc.executable, proc.args or [], cwd, proc.truncated, proc.args_count, proc.command_line)
    account = _account(v)
    if account:
        proc.account = {**dict(account), **(proc.account or {})}


_PE = (("pe.original_file_name", "original_file_name"), ("pe.product", "product"), ("pe.company", "company"),
       ("pe.description", "description"))


@lru_cache(maxsize=1024)
def _hash_info(value: str) -> tuple:
    """(`hash.sha256`, digest) pairs of Sysmon's Hashes; an image's starts repeat its string."""
    return tuple((f"{k}.{algo}", digest) for k, sub in hashes(value).items() for algo, digest in sub.items())


def _with_command_line(fields: dict, cmd: str, sid: str | None) -> ProcessExec:
    args = split_command_line(cmd)
    account = fields["account"] or ((("id", sid),) if sid else ())
    return ProcessExec(**{**fields, "command_line": _b(cmd), "args": tuple(map(_b, args)), "argc": len(args),
                          "account": account})


def _process_command_line(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    pid, ppid, cmd = _int(v.get("pid")), _int(v.get("ppid")) or 0, v.get("command_line")
    if pid is None or cmd is None:
        return []
    key = (pid, ppid)
    pending = m._starts.pop(key, None)
    if pending is not None:
        return [_with_command_line(pending[0], cmd, v.get("user_sid"))]
    m._command_lines[key] = (cmd, v.get("user_sid"), ev.ts_ns + 10 * 1_000_000_000)  # osquery's 10 s
    return []


def _process_end(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    pid = _int(v.get("pid"))
    if pid is None:
        return []
    out = []
    for key in [k for k in m._starts if k[0] == pid]:  # its start first, command line or not
        out.append(ProcessExec(**m._starts.pop(key)[0]))
    proc = m.table.live.get(pid) if m.table is not None else None
    start = time_ns(v.get("start")) or (proc.start_ns if proc else 0)
    end = time_ns(v.get("end")) or ev.ts_ns
    image = v.get("image")
    comm = _b(basename(m.drives.path(image)))[:15] if image else b""
    return out + [ProcessExit(end, pid, (proc.ppid or 0) if proc else 0, start, None, comm, code=_int(v.get("exit_code")))]


def _file(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    path = m.drives.path(v.get("path"))
    if not path:
        return []
    pid, comm = m._actor(ev, v)
    tid = _int(v.get("tid")) or (ev.tid if pid == ev.pid else 0)
    return [FileActivity(ev.ts_ns, pid, tid, None, d.extra["op"], _b(path), comm=comm)]


def _address(x) -> str:
    """An address as TDH formats it (dotted or colon text), or an IPv4 UInt32 in network order."""
    if isinstance(x, int):
        return str(ipaddress.IPv4Address(x.to_bytes(4, "little")))
    return str(ipaddress.ip_address(str(x).strip("[]")))


def _network(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    try:
        local = (_address(v["saddr"]), _int(v.get("sport")) or 0)
        remote = (_address(v["daddr"]), _int(v.get("dport")) or 0)
    except (KeyError, ValueError):
        return []
    op = d.extra.get("op", "connect")
    if "initiated" in v and str(v["initiated"]).lower() == "false":  # Sysmon: accepted here
        op = "accept"
    pid, comm = m._actor(ev, v)
    size = _int(v.get("size")) or 0
    transport = str(v.get("transport") or d.extra.get("transport") or "tcp").lower()
    return [NetActivity(ev.ts_ns, pid, ev.tid if pid == ev.pid else 0, None, op, transport, local, remote,
                        bytes_sent=size if op == "udp-send" else 0, bytes_received=size if op == "udp-receive" else 0,
                        inbound=op in ("accept", "udp-receive"), comm=comm,
                        local_domain=v.get("shost"), remote_domain=v.get("dhost"))]


def _dns(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    name = v.get("name")
    if not name:
        return []
    pid, comm = m._actor(ev, v)
    qtype = _int(v.get("type"))
    results = tuple(x for x in str(v.get("results") or "").split(";") if x.strip())
    return [DnsLookup(ev.ts_ns, pid, ev.tid if pid == ev.pid else 0, None, str(name).rstrip("."),
                      QTYPES.get(qtype, str(qtype)) if qtype is not None else None, _int(v.get("status")), results,
                      comm)]


def _registry(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    op = d.extra.get("op") or SYSMON_REGISTRY.get(str(v.get("event_type")))
    key = v.get("key")
    if op is None or not key:
        return []
    if v.get("base") and not str(key).startswith("\\"):  # CreateKey: RelativeName under BaseName
        key = f"{str(v['base']).rstrip(chr(92))}\\{key}"
    key, value = registry_path(str(key)), v.get("value")
    if ev.channel is not None and op in ("set-value", "delete-value"):
        key, _, value = key.rpartition("\\")  # Sysmon's TargetObject ends with the value's name
    pid, comm = m._actor(ev, v)
    dtype = _int(v.get("type"))
    return [RegistryChange(ev.ts_ns, pid, ev.tid if pid == ev.pid else 0, None, op, key, value,
                           None if v.get("data") is None else str(v["data"]),
                           REG_TYPES.get(dtype, str(dtype)) if dtype is not None else None, comm)]


def _logon(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    from .logins import decode

    data = {d.map[k]: str(x) for k, x in v.items()}
    event = decode({"EventID": ev.event_id, "TimeCreated": rfc3339(ev.ts_ns) if ev.ts_ns else None, "EventData": data})
    return [] if event is None else [event]


def _service_install(m: Mapper, ev: WinEvent, d: EventDef, v: dict) -> list:
    from ..inventory.services import service_event
    from .logins import START_TYPES
    from .services import executable

    image = v.get("image")
    start = str(v.get("start_type") or "")
    start = SERVICE_START_TYPES.get(start, start)  # 4697 gives the number, 7045 the words
    ev_out = service_event("added", {
        "name": v.get("name"), "type": "windows", "code": str(ev.event_id),
        "start_mode": START_TYPES.get(start.lower(), start or None), "executable": executable(m.drives.path(image)),
        "command_line": image, "user": v.get("account")}, module="winlog")
    if v.get("type") is not None:
        ev_out["service"]["kind"] = str(v["type"])
    return [ev_out]


MAPPERS = {"process_start": _process_start, "process_command_line": _process_command_line,
           "process_end": _process_end, "file": _file, "network": _network, "dns": _dns, "registry": _registry,
           "logon": _logon, "service_install": _service_install, **activity.BUILDERS}
