"""The Windows event kinds Linux has no record for, in the schema: Sysmon's image and driver
loads (6, 7), process access and remote threads (10, 8), raw disk reads (9), named pipes (17, 18)
and PowerShell's script blocks and pipeline details (4104, 4103). The one place they become events;
the acting process comes from the mapper (the process cache where it has one). Linux's ptrace and
module loads are `security` events of the same shape (target.process.*, file.path)."""
from __future__ import annotations

import ntpath

from ..schema import rfc3339
from .fields import ABSENT, account, basename, hashes, module_of, number

# Sigma logsource category of each event.action made here (sensor.windows.sigma reads it)
CATEGORIES = {"image-load": "image_load", "driver-load": "driver_load", "process-access": "process_access",
              "create-remote-thread": "create_remote_thread", "raw-read": "raw_access_thread",
              "pipe-create": "pipe_created", "pipe-connect": "pipe_created", "script-block": "ps_script",
              "pipeline-execution": "ps_module"}


def _event(ev, category: list, types: list, action: str, dataset: str, **parts) -> dict:
    out = {"event": {"kind": "event", "category": category, "type": types, "action": action, "dataset": dataset,
                     "module": module_of(ev)}}
    if ev.ts_ns:
        out["@timestamp"] = rfc3339(ev.ts_ns)
    out.update((k, x) for k, x in parts.items() if x)
    return out


def _bool(v) -> bool | None:
    return None if v in ABSENT else str(v).strip().lower() == "true"


def _image(m, v: dict) -> dict:
    """ECS file-like fields of a loaded image (dll.*, file.*): path, name, hashes, PE and signature."""
    path = m.drives.path(v.get("path"))
    out: dict = {"path": path, "name": basename(path)} if path else {}
    out.update(hashes(v.get("hashes")))
    pe = {k: v[f] for k, f in (("original_file_name", "original_file_name"), ("description", "description"),
                               ("product", "product"), ("company", "company"), ("file_version", "file_version"))
          if v.get(f) not in ABSENT}
    if pe:
        out.setdefault("pe", {}).update(pe)
    signature = {k: x for k, x in (("exists", _bool(v.get("signed"))), ("subject_name", v.get("signature")),
                                   ("status", v.get("signature_status"))) if x not in ABSENT}
    if signature:
        out["code_signature"] = signature
    return out


def image_load(m, ev, d, v: dict) -> list:
    return [_event(ev, ["library"], ["start"], "image-load", "library", **m.actor(ev, v), dll=_image(m, v))]


def driver_load(m, ev, d, v: dict) -> list:
    """No acting process: the kernel loads drivers (Sysmon 6 names none)."""
    return [_event(ev, ["driver"], ["start"], "driver-load", "driver", file=_image(m, v))]


def process_access(m, ev, d, v: dict) -> list:
    """One process opened another (10: GrantedAccess, CallTrace) or started a thread in it (8)."""
    target_pid = number(v.get("target_pid"))
    target = m.process(target_pid, m.drives.path(v.get("target_image")), account(None, v.get("target_user")))
    if number(v.get("target_tid")):
        target["process"]["thread"] = {"id": number(v["target_tid"])}
    security = {k: v[f] for k, f in (("granted_access", "granted_access"), ("call_trace", "call_trace"),
                                     ("start_address", "start_address"), ("start_module", "start_module"),
                                     ("start_function", "start_function")) if v.get(f) not in ABSENT}
    action = d.extra["action"]
    types = ["access"] if action == "process-access" else ["change"]
    return [_event(ev, ["process"], types, action, "security", **m.actor(ev, v),
                   target={k: x for k, x in target.items() if x}, security=security)]


def raw_access(m, ev, d, v: dict) -> list:
    """A raw read of a volume (`\\Device\\HarddiskVolume2`): around the file system's access checks."""
    return [_event(ev, ["file"], ["access"], "raw-read", "security", **m.actor(ev, v),
                   file={"device": v["device"]} if v.get("device") else None)]


def pipe(m, ev, d, v: dict) -> list:
    """A named pipe created or connected to; file.name is the pipe's (`\\PSEXESVC-stdin`), as winlogbeat puts it."""
    action = d.extra["action"]
    file = {"name": v["name"]} if v.get("name") else None
    return [_event(ev, ["file"], ["creation" if action == "pipe-create" else "access"], action, "pipe",
                   **m.actor(ev, v), file=file)]


def ps_script(m, ev, d, v: dict) -> list:
    """A script block as PowerShell compiled it (ECS names as Elastic's PowerShell module has them);
    a long script is several events, part `powershell.sequence` of `powershell.total`."""
    ps = {"file": {k: x for k, x in (("script_block_text", v.get("text")), ("script_block_id", v.get("id")))
                   if x not in ABSENT}}
    for k, f in (("sequence", "number"), ("total", "total")):
        if number(v.get(f)) is not None:
            ps[k] = number(v[f])
    path = m.drives.path(v.get("path"))
    file = {"path": path, "name": basename(path), "directory": ntpath.dirname(path)} if path else None
    return [_event(ev, ["process"], ["info"], "script-block", "powershell", **m.process(ev.pid, None, ()),
                   powershell=ps, file=file)]


def ps_module(m, ev, d, v: dict) -> list:
    """Pipeline execution details (module logging): what ran, as PowerShell's Payload text says it."""
    ps = {k: x for k, x in (("payload", v.get("payload")), ("context_info", v.get("context"))) if x not in ABSENT}
    return [_event(ev, ["process"], ["info"], "pipeline-execution", "powershell", **m.process(ev.pid, None, ()),
                   powershell=ps)]


BUILDERS = {"image_load": image_load, "driver_load": driver_load, "process_access": process_access,
            "raw_access": raw_access, "pipe": pipe, "ps_script": ps_script, "ps_module": ps_module}
