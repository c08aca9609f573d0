"""File activity source on Linux: bpf/activity/file.c's records, filtered by path prefix in the kernel."""
from __future__ import annotations

import ctypes
import posixpath

from .. import wire
from ..files import prefix_bytes
from ..records import FileActivity
from .activity import Activity, ActivityPart
from .process import _cstr

_FILE, _CALL, _PREFIX_KEY = wire.CTYPES["file_event"], wire.CTYPES["file_call"], wire.CTYPES["prefix_key"]
_PATH_AT = ctypes.sizeof(_FILE)  # the path follows the struct, path2 FILE_PATH_MAX further
OPS = {wire.FILE_CREATE: "create", wire.FILE_WRITE: "write", wire.FILE_DELETE: "delete",
       wire.FILE_RENAME: "rename", wire.FILE_CHMOD: "chmod", wire.FILE_CHOWN: "chown",
       wire.FILE_LINK: "link", wire.FILE_SYMLINK: "symlink", wire.FILE_TRUNCATE: "truncate",
       wire.FILE_MKDIR: "mkdir", wire.FILE_RMDIR: "rmdir"}
_NO_ID = 0xFFFFFFFF


def prefix_key(prefix: bytes) -> bytes:
    """The LPM trie key of a path prefix: its length in bits, then its bytes."""
    if len(prefix) > wire.PREFIX_MAX:
        from ..errors import ConfigError

        raise ConfigError(f"files.paths/files.exclude: a prefix longer than {wire.PREFIX_MAX} bytes: "
                          f"{prefix[:60]!r}...")
    return bytes(_PREFIX_KEY(prefixlen=len(prefix) * 8, path=prefix))


def _clean(path: bytes) -> bytes:
    """Paths joined from a cwd and the caller's string: drop `.`, `..` and doubled slashes
    lexically (the kernel did not resolve them)."""
    out = posixpath.normpath(path)
    return out[1:] if out.startswith(b"//") else out


# syscall -> (kind, op, {field: argument index}); see bpf/sensor.h struct file_call
_N = wire.FC_NONE
CALLS = {
    **{name: (wire.FC_OPEN, 0, {}) for name in ("open", "openat", "openat2", "creat")},
    "write": (wire.FC_WRITE, 0, {"path": 0, "bytes": 2}), "pwrite64": (wire.FC_WRITE, 0, {"path": 0, "bytes": 2}),
    **{name: (wire.FC_WRITE, 0, {"path": 0}) for name in ("writev", "pwritev", "pwritev2")},
    "close": (wire.FC_CLOSE, 0, {"path": 0}),
    "fchmod": (wire.FC_FD, wire.FILE_CHMOD, {"path": 0, "mode": 1}),
    "fchown": (wire.FC_FD, wire.FILE_CHOWN, {"path": 0, "owner": 1}),
    "ftruncate": (wire.FC_FD, wire.FILE_TRUNCATE, {"path": 0}),
    "unlinkat": (wire.FC_PATH, wire.FILE_DELETE, {"dirfd": 0, "path": 1, "flags": 2}),
    "unlink": (wire.FC_PATH, wire.FILE_DELETE, {"path": 0}),
    "rmdir": (wire.FC_PATH, wire.FILE_RMDIR, {"path": 0}),
    "mkdirat": (wire.FC_PATH, wire.FILE_MKDIR, {"dirfd": 0, "path": 1, "mode": 2}),
    "mkdir": (wire.FC_PATH, wire.FILE_MKDIR, {"path": 0, "mode": 1}),
    **{name: (wire.FC_PATH, wire.FILE_RENAME, {"dirfd": 2, "path": 3, "dirfd2": 0, "path2": 1})
       for name in ("renameat", "renameat2")},
    "rename": (wire.FC_PATH, wire.FILE_RENAME, {"path": 1, "path2": 0}),
    "linkat": (wire.FC_PATH, wire.FILE_LINK, {"dirfd": 2, "path": 3, "dirfd2": 0, "path2": 1}),
    "link": (wire.FC_PATH, wire.FILE_LINK, {"path": 1, "path2": 0}),
    "symlinkat": (wire.FC_PATH, wire.FILE_SYMLINK, {"dirfd": 1, "path": 2, "path2": 0, "raw2": 1}),
    "symlink": (wire.FC_PATH, wire.FILE_SYMLINK, {"path": 1, "path2": 0, "raw2": 1}),
    **{name: (wire.FC_PATH, wire.FILE_CHMOD, {"dirfd": 0, "path": 1, "mode": 2}) for name in ("fchmodat", "fchmodat2")},
    "chmod": (wire.FC_PATH, wire.FILE_CHMOD, {"path": 0, "mode": 1}),
    "fchownat": (wire.FC_PATH, wire.FILE_CHOWN, {"dirfd": 0, "path": 1, "owner": 2}),
    **{name: (wire.FC_PATH, wire.FILE_CHOWN, {"path": 0, "owner": 1}) for name in ("chown", "lchown")},
    "truncate": (wire.FC_PATH, wire.FILE_TRUNCATE, {"path": 0}),
}


def call_table(numbers: dict[str, int]) -> dict[int, bytes]:
    """file_calls entries {syscall nr: struct file_call} for the syscalls this arch has."""
    out = {}
    for name, (kind, op, args) in CALLS.items():
        if name in numbers:
            out[numbers[name]] = bytes(_CALL(kind=kind, op=op, **{
                "dirfd": _N, "path": _N, "dirfd2": _N, "path2": _N, "mode": _N, "owner": _N,
                "flags": _N, "bytes": _N, "raw2": 0, **args}))
    return out


def decode(raw: bytes) -> FileActivity | None:
    r = _FILE.from_buffer_copy(raw)
    op, flags, mode, uid, gid, path2_len = r.op, r.flags, r.mode, r.uid, r.gid, r.path2_len
    if r.type != wire.EVENT_FILE or op not in OPS:
        return None
    path = _cstr(raw[_PATH_AT:_PATH_AT + r.path_len])
    base2 = _PATH_AT + wire.FILE_PATH_MAX
    path2 = _cstr(raw[base2:base2 + path2_len]) if path2_len else None
    has_inode = bool(flags & wire.FILE_HAS_INODE)
    if not has_inode:  # built from the caller's string: normalise what the kernel joined
        path = _clean(path)
        if path2 is not None and op != wire.FILE_SYMLINK:  # a symlink's target stays as written
            path2 = _clean(path2)
    truncated = frozenset(n for bit, n in ((wire.FILE_PATH_TRUNCATED, "path"),
                                           (wire.FILE_PATH2_TRUNCATED, "path2")) if flags & bit)
    return FileActivity(
        ts_ns=r.ts_ns, pid=r.pid, tid=r.tid, start_ns=r.start_ns, op=OPS[op], path=path, path2=path2,
        dev=r.dev if has_inode else None, ino=r.ino if has_inode else None,
        mode=mode if (has_inode or mode) else None,
        uid=None if uid == _NO_ID else uid, gid=None if gid == _NO_ID else gid,
        count=r.count, bytes=r.bytes, comm=r.comm, truncated=truncated,
        at_close=bool(flags & wire.FILE_AT_CLOSE))


class FileSource(ActivityPart):
    """The file part of the shared activity programs; `poll` returns FileActivity records."""

    name = "file"
    ring = "file_events"
    event_types = (wire.EVENT_FILE,)
    decode = staticmethod(decode)

    def __init__(self, activity: Activity, paths: list[str], exclude: list[str] = (), *,
                 ring_buffer_bytes: int = 4 << 20, write_interval: float = 1.0):
        super().__init__(activity, ring_buffer_bytes)
        self.paths, self.exclude = list(paths), list(exclude)
        self.write_interval = write_interval

    def rodata(self, numbers):
        return {"write_interval_ns": int(self.write_interval * 1e9)}

    def setup(self, obj, numbers):
        calls = obj.map("file_calls")
        for nr, entry in call_table(numbers).items():
            calls.update(nr, entry)
        prefixes = obj.map("prefixes")
        for kind, items in ((wire.PREFIX_WATCH, self.paths), (wire.PREFIX_EXCLUDE, self.exclude)):
            for p in items:
                prefixes.update(prefix_key(prefix_bytes(p)), bytes([kind]))
