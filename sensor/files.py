"""File events in the schema: the one place FileActivity records (from any backend) become
`event.dataset: file` events."""
from __future__ import annotations

import os
import stat

from .records import FileActivity
from .schema import text

# op -> (event.type, file.type when the op decides it)
OPS = {
    "create": (["creation"], "file"), "mkdir": (["creation"], "dir"),
    "write": (["change"], None), "truncate": (["change"], None),
    "chmod": (["change"], None), "chown": (["change"], None), "rename": (["change"], None),
    "link": (["creation"], None), "symlink": (["creation"], "symlink"),
    "delete": (["deletion"], None), "rmdir": (["deletion"], "dir"),
}
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}


def _sep(path: str) -> str:
    """A Windows path (`C:\\...`, `\\\\server\\...`) splits at backslashes, any other at slashes."""
    return "\\" if path[1:3] == ":\\" or path.startswith("\\\\") else "/"


def basename(path: str) -> str:
    if path[:1] == "/":  # POSIX, nearly always: one scan, no split list
        return path[path.rfind("/") + 1:]
    return path.rsplit(_sep(path), 1)[-1]


def path_fields(path: bytes | str, prefix: str, escaped: list[str]) -> dict:
    """file.path, file.name, file.directory and file.extension of one path (POSIX or Windows)."""
    s, esc = text(path)
    if esc:
        escaped.append(prefix + ".path")
    sep = _sep(s)
    directory, name = s.rsplit(sep, 1) if sep in s else ("", s)
    if sep == "\\" and directory.endswith(":"):  # C:\x: the directory is the drive's root
        directory += sep
    out = {"path": s, "name": name, "directory": directory or "/"}
    ext = os.path.splitext(name)[1]
    if len(ext) > 1:
        out["extension"] = ext[1:]
    return out


def prefix_bytes(path: str) -> bytes:
    """A configured prefix as matched in the kernel: a directory (no trailing `*`) matches what
    is under it, `/etc/cron*` matches names that start so."""
    raw = os.fsencode(path)
    if raw.endswith(b"*"):
        return raw[:-1]
    return raw.rstrip(b"/") + b"/"


def kernel_dev(dev: int) -> str:
    """The kernel's dev_t encoding (major << 20 | minor) as `major:minor`."""
    return f"{dev >> 20}:{dev & 0xFFFFF}"


def file_event(r: FileActivity, table) -> dict:
    """The event of one record, from any backend; `table` (the process cache) names the acting
    process, None where the OS does not say who (watchdog)."""
    types, ftype = OPS[r.op]
    escaped: list[str] = []
    file = path_fields(r.path, "file", escaped)
    if r.mode is not None:
        if ftype is None:
            ftype = _TYPES.get(stat.S_IFMT(r.mode))
        file["mode"] = f"{stat.S_IMODE(r.mode):04o}"
    if ftype:
        file["type"] = ftype
    if r.uid is not None:
        file["uid"] = str(r.uid)
    if r.gid is not None:
        file["gid"] = str(r.gid)
    if r.ino is not None:
        file["inode"] = str(r.ino)
        file["device"] = kernel_dev(r.dev)
    if r.path2 is not None:
        if r.op == "rename":
            file["original"] = path_fields(r.path2, "file.original", escaped)
        else:  # link: the existing file; symlink: the target as written
            file["target_path"], esc = text(r.path2)
            if esc:
                escaped.append("file.target_path")
    if r.op == "write":
        file["write_count"] = r.count
        file["write_bytes"] = r.bytes
    event = {"event": {"kind": "event", "category": ["file"], "type": types, "action": r.op,
                       "dataset": "file", "module": "ebpf"},
             "file": file, **(table.actor(r.pid, r.start_ns, r.tid, r.comm) if table is not None else {})}
    truncated = [f for name, f in (("path", "file.path"),
                                   ("path2", "file.original.path" if r.op == "rename" else "file.target_path"))
                 if name in r.truncated]
    if escaped or truncated:
        flags = event.setdefault("sensor", {})
        if escaped:
            flags["escaped"] = flags.get("escaped", []) + escaped
        if truncated:
            flags["truncated"] = flags.get("truncated", []) + truncated
    return event
