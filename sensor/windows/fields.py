"""Values as Windows events write them, read into the schema's: ids in hex or decimal, accounts
(`DOMAIN\\name`, a SID), Sysmon's Hashes list, and the event.module a channel's events carry."""
from __future__ import annotations

import ntpath

ABSENT = (None, "", "-")
MODULES = {"microsoft-windows-sysmon/operational": "sysmon", "security": "security", "system": "system",
           "microsoft-windows-powershell/operational": "powershell"}


def number(v) -> int | None:
    """An id as TDH or the Event Log gives it: an int, decimal digits, or hex (`0x1a4`)."""
    if v in ABSENT:
        return None
    if isinstance(v, int):
        return v
    s = str(v).strip()
    try:
        return int(s, 16) if s[:2].lower() == "0x" else int(s)
    except ValueError:
        return None


def account(sid=None, name=None, domain=None) -> tuple:
    """user.* pairs from a SID, a name and a domain, or Sysmon's `DOMAIN\\name`: the name and the
    domain apart, as Security's SubjectUserName and SubjectDomainName are, and whole in
    `qualified_name` (the form Sysmon writes and SigmaHQ's `User` rules match: `NT AUTHORITY\\SYSTEM`)."""
    name = None if name in ABSENT else str(name)
    domain = None if domain in ABSENT else str(domain)
    if name and "\\" in name and not domain:
        domain, name = name.split("\\", 1)
    qualified = f"{domain}\\{name}" if name and domain else name
    return tuple((k, x) for k, x in (("id", sid), ("name", name), ("domain", domain), ("qualified_name", qualified))
                 if x not in ABSENT)


def hashes(v) -> dict:
    """Sysmon's `SHA1=..,MD5=..,SHA256=..,IMPHASH=..` as ECS `hash.*` and `pe.imphash`, lowercase."""
    out: dict = {}
    for pair in (v or "").split(","):
        algo, _, digest = pair.partition("=")
        if digest:
            if algo.strip().upper() == "IMPHASH":
                out.setdefault("pe", {})["imphash"] = digest.strip().lower()
            else:
                out.setdefault("hash", {})[algo.strip().lower()] = digest.strip().lower()
    return out


def module_of(ev) -> str:
    """event.module of what an event became: its Event Log channel's (as winlogbeat names them), or etw."""
    return MODULES.get((ev.channel or "").lower(), "winlog") if ev.channel else "etw"


def basename(path: str) -> str:
    """ntpath.basename, at a fraction of its cost for the usual `C:\\dir\\name`."""
    if path[1:3] == ":\\" and "/" not in path:
        return path[path.rfind("\\") + 1:]
    return ntpath.basename(path)
