"""The process cache: entities seeded from /proc, kept current by exec/fork/exit records,
and the one place where process records become schema events."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import psutil

from .backend import system
from .host import NS_PER_TICK, Host, start_ticks
from .records import (UNSET_ID, BlockedOpen, DnsLookup, FileActivity, NetActivity, ProcessExec, ProcessExit,
                      ProcessFork, RegistryChange, SecurityCall, Tamper)
from .files import basename, file_event, kernel_dev, path_fields
from .network import dns_event, network_event
from .registry import registry_event
from .schema import exit_fields, rfc3339, text
from .security import security_event

log = logging.getLogger("sensor.processes")


user_name, group_name = system.user_name, system.group_name  # uid -> name (Windows: none, see Proc.account)


def _ids(uid: int | None) -> dict:
    return dict(_user(uid)) if uid is not None else {}  # a copy: events add to it (user.audit)


def _gids(gid: int | None) -> dict:
    return dict(_group(gid)) if gid is not None else {}


@lru_cache(maxsize=1024)
def _user(uid: int) -> dict:
    name = user_name(uid)
    return {"id": str(uid), "name": name} if name else {"id": str(uid)}


@lru_cache(maxsize=1024)
def _group(gid: int) -> dict:
    name = group_name(gid)
    return {"id": str(gid), "name": name} if name else {"id": str(gid)}


_NOTHING: frozenset = frozenset()


@dataclass(slots=True)
class Proc:
    """One process. Its image and ids change only through set_image/set_ids, which rebuild the
    cached `process.*` fields every event of it repeats (each exec makes three events, and each
    names its parent too)."""
    pid: int
    start_ns: int
    entity_id: str
    ppid: int | None = None
    parent_entity_id: str | None = None
    executable: str | None = None
    name: str | None = None
    args: list[str] | None = None
    args_count: int | None = None
    command_line: str | None = None
    cwd: str | None = None
    uid: int | None = None
    euid: int | None = None
    gid: int | None = None
    egid: int | None = None
    escaped: frozenset[str] = _NOTHING  # of: executable, args, working_directory
    truncated: frozenset[str] = _NOTHING
    _short: dict | None = None  # the image fields of ecs(full=False), and of ecs()
    _full: dict | None = None
    _start: str | None = None
    _ecs_short: dict | None = None  # what ecs() copies: the image fields with pid, entity and start
    _ecs_full: dict | None = None
    account: dict | None = None  # Windows: user.* from the SID and name the OS recorded (no uid)

    def set_image(self, executable, args: list, cwd, truncated=_NOTHING, args_count: int | None = None,
                  command_line=None):
        """`command_line`: as the OS recorded it (Windows), else the args joined."""
        escaped: set[str] = set()
        self.executable = _text(escaped, "executable", executable)
        self.name = basename(self.executable) if self.executable else None
        self.args = [_text(escaped, "args", a) for a in args]
        self.args_count = len(self.args) if args_count is None else args_count
        self.command_line = " ".join(self.args) if command_line is None else _text(escaped, "args", command_line)
        self.cwd = _text(escaped, "working_directory", cwd)
        self.escaped, self.truncated = frozenset(escaped), frozenset(truncated)
        self._short = self._full = self._ecs_short = self._ecs_full = None

    def set_ids(self, uid, euid, gid, egid):
        self.uid, self.euid, self.gid, self.egid = uid, euid, gid, egid
        self._full = self._ecs_full = None

    def child(self, pid: int, start_ns: int, entity_id: str) -> "Proc":
        """The process a fork makes: this image until it execs, its own identity."""
        return Proc(pid, start_ns, entity_id, self.pid, self.entity_id, self.executable, self.name, self.args,
                    self.args_count, self.command_line, self.cwd, self.uid, self.euid, self.gid, self.egid,
                    self.escaped, self.truncated, self._short, self._full)

    def ecs(self, host: Host, full: bool = True) -> dict:
        """`process.*` of an event: a new dict each time (callers add to it), sharing the
        cached values."""
        base = self._ecs_full if full else self._ecs_short
        if base is None:
            if self._start is None:
                self._start = rfc3339(host.unix_ns(self.start_ns))
            image = self._full_fields() if full else self._short_fields()
            base = {"pid": self.pid, "entity_id": self.entity_id, "start": self._start, **image}
            if not self.start_ns:  # known only from another process's event (Windows): start unknown
                del base["start"]
            if full:
                self._ecs_full = base
            else:
                self._ecs_short = base
        return base.copy()

    def _short_fields(self) -> dict:
        if self._short is None:
            self._short = {k: v for k, v in (("executable", self.executable), ("name", self.name),
                                             ("args", self.args), ("args_count", self.args_count),
                                             ("command_line", self.command_line)) if v is not None}
        return self._short

    def _full_fields(self) -> dict:
        if self._full is None:
            d = dict(self._short_fields())
            if self.cwd is not None:
                d["working_directory"] = self.cwd
            if self.uid is not None:
                d["real_user"], d["user"] = _user(self.uid), _user(self.euid)
                d["real_group"] = _group(self.gid) if self.gid is not None else {}
                d["group"] = _group(self.egid) if self.egid is not None else {}
            self._full = d
        return self._full

    def flagged(self, prefix: str, which) -> list[str]:
        if not which:
            return []
        fields = sorted(which)
        if "args" in which:
            fields.append("command_line")
        return [f"{prefix}.{f}" for f in fields]


def _text(escaped: set, name: str, raw):
    if raw is None:
        return None
    s, was_escaped = text(raw)
    if was_escaped:
        escaped.add(name)
    return s


class ProcessTable:
    """Live processes by pid, plus recently exited ones for late parent lookups."""

    def __init__(self, host: Host, keep_exited: int = 4096):
        self.host = host
        self.live: dict[int, Proc] = {}
        self.exited: OrderedDict[tuple[int, int], Proc] = OrderedDict()
        self.keep_exited = keep_exited
        # paths files were written to: the kernel flags an exec of a written binary by inode, but
        # a script's exe_file is its interpreter, so scripts are matched here by name
        self.written: OrderedDict[bytes, int] = OrderedDict()
        self.sensor_pids = {os.getpid()}  # what the kernel programs protect (their ignored_tgids)

    def seed(self) -> int:
        """Snapshots /proc so processes that started before the sensor have entities too."""
        for p in psutil.process_iter(system.seed_attrs, ad_value=None):
            info = p.info
            ticks = start_ticks(info["pid"])
            start = None if ticks is None else ticks * NS_PER_TICK
            if start is None:
                continue
            proc = self._new(info["pid"], start)
            proc.ppid = info["ppid"]
            ppid_ticks = start_ticks(proc.ppid) if proc.ppid else None
            if ppid_ticks is not None:
                proc.parent_entity_id = self.host.entity_id(proc.ppid, ppid_ticks * NS_PER_TICK)
            proc.set_image(info["exe"] or None, info["cmdline"] or [], info["cwd"])
            *ids, account = system.seed_ids(info)
            proc.set_ids(*ids)
            if account:
                proc.account = dict(account)
            self.live[proc.pid] = proc
        return len(self.live)

    def _new(self, pid: int, start_ns: int) -> Proc:
        return Proc(pid=pid, start_ns=start_ns, entity_id=self.host.entity_id(pid, start_ns))

    def find(self, pid: int, start_ns: int | None = None) -> Proc | None:
        proc = self.live.get(pid)
        if proc and (start_ns is None or _same_start(proc.start_ns, start_ns)):
            return proc
        if start_ns is not None:
            return self.exited.get((pid, start_ns // NS_PER_TICK))
        return None

    def handle(self, record) -> dict | None:
        if isinstance(record, ProcessExec):
            return self.on_exec(record)
        if isinstance(record, ProcessFork):
            return self.on_fork(record)
        if isinstance(record, ProcessExit):
            return self.on_exit(record)
        if isinstance(record, Tamper):
            return self.on_tamper(record)
        if isinstance(record, BlockedOpen):
            return self.on_blocked(record)
        if isinstance(record, FileActivity):
            if record.op in ("create", "write", "rename", "link", "chmod"):
                self.written.pop(record.path, None)
                self.written[record.path] = record.ts_ns
                if len(self.written) > self.keep_exited:
                    self.written.popitem(last=False)
            return file_event(record, self)
        if isinstance(record, NetActivity):
            return network_event(record, self)
        if isinstance(record, SecurityCall):
            target = record.args[1] & 0xFFFFFFFF
            if record.syscall == "ptrace" and record.args[0] and target in self.sensor_pids:
                # the security programs stand in for the process object's ptrace hook (see watch_ptrace)
                return self.on_tamper(Tamper(record.ts_ns, record.pid, record.tid, target, 0, record.args[0],
                                             record.comm))
            return security_event(record, self)
        if isinstance(record, RegistryChange):
            return registry_event(record, self)
        if isinstance(record, DnsLookup):
            return dns_event(record, self)
        return None

    def actor(self, pid: int, start_ns: int | None, tid: int, comm: bytes) -> dict:
        """The `process`, `user` and `sensor` flags of an event some process caused."""
        proc = self.find(pid, start_ns)
        if proc is None:  # not in the cache (started and ended between two reads): what the record says
            entity = {"entity_id": self.host.entity_id(pid, start_ns)} if start_ns else {}
            return {"process": {"pid": pid, **entity, "name": text(comm)[0], **({"thread": {"id": tid}} if tid else {})},
                    "user": {}}
        process = proc.ecs(self.host, full=False)
        if tid:  # 0: not said (Windows events about another process)
            process["thread"] = {"id": tid}
        if proc.ppid:
            process["parent"] = {"pid": proc.ppid, **({"entity_id": proc.parent_entity_id}
                                                      if proc.parent_entity_id else {})}
        out = {"process": process, "user": dict(proc.account) if proc.account else _ids(proc.euid)}
        flags = {}
        if proc.escaped:
            flags["escaped"] = proc.flagged("process", proc.escaped & {"executable", "args"})
        if proc.truncated:
            flags["truncated"] = proc.flagged("process", proc.truncated & {"executable", "args"})
        if any(flags.values()):
            out["sensor"] = {k: v for k, v in flags.items() if v}
        return out

    def on_tamper(self, r: Tamper) -> dict:
        """A signal or ptrace aimed at the sensor by another process: an alert of its own."""
        import signal as _signal

        sender = self.live.get(r.pid)
        process = sender.ecs(self.host) if sender else {"pid": r.pid, "name": text(r.comm)[0]}
        process["thread"] = {"id": r.tid}
        if r.sig:
            name = _signal.Signals(r.sig).name if r.sig in _signal.Signals._value2member_map_ else f"signal {r.sig}"
            what, rid, action = f"{name} sent to the sensor", "sensor-tamper-signal", "sensor-signaled"
        else:
            what, rid, action = f"ptrace request {r.request} aimed at the sensor", "sensor-tamper-ptrace", "sensor-ptraced"
        return {
            "event": {"kind": "alert", "category": ["intrusion_detection"], "type": ["info"], "action": action,
                      "dataset": "alert", "module": "sensor", "severity": 73, "reason": what},
            "rule": {"id": rid, "name": "Sensor tampering: " + ("signal" if r.sig else "ptrace"),
                     "description": "Another process aimed a signal or a ptrace request at the sensor.",
                     "author": "sensor project", "level": "high", "ruleset": "sensor"},
            "process": process,
            "user": _ids(sender.euid) if sender else {},
            "sensor": {"tamper": {"target_pid": r.target_pid, "signal": r.sig or None,
                                  "ptrace_request": None if r.sig else r.request}},
        }

    def on_exec(self, r: ProcessExec) -> dict:
        proc = self.find(r.pid, r.start_ns) or self._new(r.pid, r.start_ns)
        self.live[r.pid] = proc
        proc.ppid = r.ppid
        if r.parent_start_ns:
            proc.parent_entity_id = self.host.entity_id(r.ppid, r.parent_start_ns)
        else:  # the parent's start is unknown (polling, Windows): the live one, if any
            parent = self.live.get(r.ppid)
            proc.parent_entity_id = parent.entity_id if parent else None
        proc.set_ids(r.uid, r.euid, r.gid, r.egid)
        if r.account:
            proc.account = dict(r.account)
        exe = r.executable
        if not exe:  # no mm->exe_file (rare): fall back to the name passed to execve
            exe = r.filename if r.filename.startswith(b"/") or r.cwd is None else r.cwd.rstrip(b"/") + b"/" + r.filename
        trunc = {"working_directory" if t == "cwd" else t for t in r.truncated if t != "filename"}
        proc.set_image(exe, r.args, r.cwd, trunc, r.argc, r.command_line)
        event = self._event("exec", ["start"], proc, r.ppid, r.parent_start_ns or None, r.tid)
        for dotted, value in r.image_info:  # pe.*, hash.*: what the OS said of this image
            head, _, leaf = dotted.rpartition(".")
            event["process"].setdefault(head, {})[leaf] = value
        if r.filename != (r.executable or b""):  # a script, or a path through a symlink
            event["process"]["filename"], escaped = text(r.filename)
            if escaped:
                event.setdefault("sensor", {}).setdefault("escaped", []).append("process.filename")
        if r.loginuid != UNSET_ID:
            event["user"]["audit"] = _ids(r.loginuid)
        if r.sessionid != UNSET_ID:
            event["process"]["session_id"] = r.sessionid
        if r.cgroup_id:
            event["process"]["cgroup"] = {"id": r.cgroup_id}
        if r.written or self._script_written(r):  # created or written since the sensor started
            event["process"]["executable_written"] = True
        if r.blocked:  # killed by the kernel before its first instruction
            event["event"]["type"] = ["start", "denied"]
            event["event"]["outcome"] = "failure"
            event.setdefault("sensor", {})["blocked"] = True
        return event

    def on_blocked(self, r: BlockedOpen) -> dict:
        """A process the kernel killed as it opened a blocked file: a blocked script's run (its
        interpreter opening it), denied as a blocked binary's exec is, naming the file."""
        proc = self.find(r.pid, r.start_ns)
        if proc is None:
            proc = self._new(r.pid, r.start_ns)
            proc.name = text(r.comm)[0]
        event = self._event("exec", ["start", "denied"], proc, proc.ppid, None, r.tid)
        event["event"]["outcome"] = "failure"
        escaped: list[str] = []
        event["file"] = {**path_fields(r.path, "file", escaped), "inode": str(r.ino), "device": kernel_dev(r.dev)}
        flags = event.setdefault("sensor", {})
        flags["blocked"] = True
        if escaped:
            flags.setdefault("escaped", []).extend(escaped)
        if r.truncated:
            flags.setdefault("truncated", []).append("file.path")
        return event

    def _script_written(self, r: ProcessExec) -> bool:
        name = r.filename
        if not self.written or not name:
            return False
        if name[:1] != b"/" and r.cwd is not None:
            name = r.cwd.rstrip(b"/") + b"/" + name
        if name in self.written:
            return True
        if b"/." not in name and b"//" not in name:  # already normal: normpath would not change it
            return False
        return os.path.normpath(name) in self.written

    def on_fork(self, r: ProcessFork) -> dict:
        parent = self.find(r.pid, r.parent_start_ns)
        if r.thread:
            proc = parent or self._new(r.pid, r.parent_start_ns)
            event = self._event("thread-start", ["start"], proc, None, None, r.child_tid)
            return event
        entity_id = self.host.entity_id(r.child_pid, r.start_ns)
        if parent:  # the child runs its parent's image until it execs
            child = parent.child(r.child_pid, r.start_ns, entity_id)
        else:
            child = Proc(r.child_pid, r.start_ns, entity_id, r.pid, self.host.entity_id(r.pid, r.parent_start_ns),
                         name=text(r.comm)[0], uid=r.uid, euid=r.uid)
        self.live[r.child_pid] = child
        return self._event("fork", ["start"], child, r.pid, r.parent_start_ns, r.child_tid)

    def on_exit(self, r: ProcessExit) -> dict:
        proc = self.find(r.pid, r.start_ns)
        if proc is None:
            proc = self._new(r.pid, r.start_ns)
            proc.name = text(r.comm)[0]
        self.live.pop(r.pid, None)
        self.exited[(r.pid, r.start_ns // NS_PER_TICK)] = proc
        while len(self.exited) > self.keep_exited:
            self.exited.popitem(last=False)
        event = self._event("exit", ["end"], proc, proc.ppid or r.ppid, None, r.pid)
        if r.exit_code is not None:
            event["process"].update(exit_fields(r.exit_code))
        elif r.code is not None:
            event["process"]["exit_code"] = r.code
        event["process"]["end"] = rfc3339(self.host.unix_ns(r.ts_ns))
        event["event"]["duration"] = max(r.ts_ns - proc.start_ns, 0)
        return event

    def _parent(self, proc: Proc, ppid: int, parent_start_ns: int | None) -> tuple[dict, Proc | None]:
        parent = self.find(ppid, parent_start_ns)
        if parent and parent_start_ns is None and parent.entity_id != proc.parent_entity_id:
            parent = None  # the pid was reused since
        if parent:
            return parent.ecs(self.host, full=False), parent
        d = {"pid": ppid}
        if parent_start_ns is not None:
            d["entity_id"] = self.host.entity_id(ppid, parent_start_ns)
            d["start"] = rfc3339(self.host.unix_ns(parent_start_ns))
        elif proc.parent_entity_id:
            d["entity_id"] = proc.parent_entity_id
        return d, None

    def _event(self, action: str, types: list[str], proc: Proc, ppid, parent_start_ns, tid) -> dict:
        process = proc.ecs(self.host)
        if tid:  # 0: not said (Windows events about another process)
            process["thread"] = {"id": tid}
        escaped, truncated = [], []
        if proc.escaped or proc.truncated:  # rare: most events skip both calls
            escaped, truncated = proc.flagged("process", proc.escaped), proc.flagged("process", proc.truncated)
        if ppid:
            process["parent"], parent = self._parent(proc, ppid, parent_start_ns)
            if parent and (parent.escaped or parent.truncated):
                shown = {"executable", "args"}
                escaped += parent.flagged("process.parent", parent.escaped & shown)
                truncated += parent.flagged("process.parent", parent.truncated & shown)
        event = {
            "event": {"kind": "event", "category": ["process"], "type": types, "action": action,
                      "dataset": "process", "module": "ebpf"},
            "process": process,
            "user": dict(proc.account) if proc.account else _ids(proc.euid),
        }
        if escaped or truncated:
            flags = event["sensor"] = {}
            if escaped:
                flags["escaped"] = escaped
            if truncated:
                flags["truncated"] = truncated
        return event


def _same_start(a: int, b: int) -> bool:
    return a // NS_PER_TICK == b // NS_PER_TICK

