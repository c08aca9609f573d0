"""Security-relevant syscalls in the schema (`event.dataset: security`): the one place
SecurityCall records become events. `event.action` names the syscall."""
from __future__ import annotations

import errno
import signal

from .records import SecurityCall
from .schema import text

PTRACE = {0: "PTRACE_TRACEME", 4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 16: "PTRACE_ATTACH",
          0x4206: "PTRACE_SEIZE"}
BPF = {5: "BPF_PROG_LOAD", 8: "BPF_PROG_ATTACH", 17: "BPF_RAW_TRACEPOINT_OPEN", 28: "BPF_LINK_CREATE"}
NAMESPACES = {0x00020000: "mnt", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
              0x10000000: "user", 0x20000000: "pid", 0x40000000: "net", 0x00000080: "time"}
# syscall -> (event.category, event.type)
KINDS = {"ptrace": (["process"], ["access"]), "init_module": (["driver"], ["start"]),
         "finit_module": (["driver"], ["start"]), "delete_module": (["driver"], ["end"]),
         "mount": (["host"], ["change"]), "umount2": (["host"], ["change"]), "move_mount": (["host"], ["change"]),
         "pivot_root": (["host"], ["change"]), "memfd_create": (["process"], ["creation"]),
         "kill": (["process"], ["end"]), "tkill": (["process"], ["end"]), "tgkill": (["process"], ["end"])}
# the effective uid/gid each call asks for: argument index
NEW_UID = {"setuid": 0, "setreuid": 1, "setresuid": 1, "setfsuid": 0}
NEW_GID = {"setgid": 0, "setregid": 1, "setresgid": 1, "setfsgid": 0}
_NO_ID = (1 << 32) - 1


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _str(r: SecurityCall, i: int, flags: dict) -> str | None:
    raw = r.strings[i]
    if raw is None:
        return None
    s, esc = text(raw)
    if esc:
        flags.setdefault("escaped", []).append(f"security.strings.{i}")
    return s


def security_event(r: SecurityCall, table) -> dict | None:
    name = r.syscall
    category, types = KINDS.get(name, (["process"], ["change"]))
    actor = table.actor(r.pid, r.start_ns, r.tid, r.comm)
    sec: dict = {"syscall": name, "args": list(r.args), "return": r.ret}
    flags: dict = {}
    event = {"event": {"kind": "event", "category": category, "type": types, "action": name,
                       "dataset": "security", "module": "ebpf",
                       "outcome": "success" if r.ret >= 0 else "failure"},
             "security": sec, **actor}
    if r.ret < 0:
        sec["error"] = errno.errorcode.get(-r.ret, str(-r.ret))
    if name in ("kill", "tkill", "tgkill", "ptrace"):
        target_pid = _s32(r.args[1] if name == "ptrace" else r.args[0])
        if name == "ptrace" and r.args[0] == 0:  # TRACEME: the parent becomes the tracer
            target_pid = actor["process"].get("parent", {}).get("pid", 0)
        target = table.find(target_pid) if target_pid > 0 else None
        event["target"] = {"process": target.ecs(table.host, full=False) if target else {"pid": target_pid}}
        if target is not None and target.euid is not None:
            event["target"]["user"] = {"id": str(target.euid)}
        if name == "ptrace":
            sec["ptrace_request"] = PTRACE.get(r.args[0], str(r.args[0]))
        else:
            sig = _s32(r.args[2] if name == "tgkill" else r.args[1])
            sec["signal"] = {"number": sig, "name": signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)}
            # only signals across users are reported: the kernel cannot see the target's uid cheaply
            sender = actor["user"].get("id")
            if target is not None and sender is not None and str(target.euid) == sender:
                return None
    elif name in NEW_UID or name in NEW_GID:
        arg = r.args[NEW_UID.get(name, NEW_GID.get(name))] & 0xFFFFFFFF
        if arg != _NO_ID:
            if name in NEW_UID:
                event["user"].setdefault("changes", {})["id"] = str(arg)
            else:
                sec["gid"] = str(arg)
    elif name in ("init_module", "finit_module", "delete_module"):
        if name == "finit_module" and r.strings[0] is not None:
            event["file"] = {"path": _str(r, 0, flags)}
        if name == "delete_module":
            sec["module"] = _str(r, 0, flags)
        elif r.strings[1] is not None:
            sec["module_params"] = _str(r, 1, flags)
    elif name == "bpf":
        sec["bpf_command"] = BPF.get(r.args[0], str(r.args[0]))
    elif name in ("mount", "umount2", "move_mount", "pivot_root"):
        sec["mount"] = {k: v for k, v in (("source", _str(r, 0, flags)), ("target", _str(r, 1, flags)),
                                          ("fstype", _str(r, 2, flags))) if v is not None}
        if name == "mount":
            sec["mount"]["flags"] = r.args[3]
    elif name == "memfd_create":
        memfd = _str(r, 0, flags)
        event["file"] = {"name": memfd, "path": f"/memfd:{memfd}"}
        sec["fd"] = r.ret
    elif name in ("unshare", "setns"):
        mask = r.args[0] if name == "unshare" else r.args[1]
        sec["namespaces"] = [n for bit, n in NAMESPACES.items() if mask & bit]
    if r.truncated:
        flags["truncated"] = [f"security.strings.{i}" for i in sorted(r.truncated)]
    if flags:
        event.setdefault("sensor", {}).update(flags)
    return event
