"""The portable file backend: watchdog observers (inotify, ReadDirectoryChangesW, kqueue, polling)
on the watched paths, coalesced into the same `file` events as the kernel source. What the OS's
notifications cannot tell is absent: the acting process, chmod apart from writes (both arrive as
modifications), and link/symlink/truncate as their own actions."""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass

from .files import file_event, prefix_bytes
from .records import FileActivity
from .timersource import TimerSource

log = logging.getLogger("sensor.watch")

# what the handler queues: opened/closed add nothing a created or modified does not say; attrib
# is watchdog 7's chmod, chown and touch on inotify
_KINDS = frozenset(("created", "deleted", "modified", "attrib", "moved"))


@dataclass
class _Pending:
    action: str
    path: bytes
    original: bytes | None = None
    count: int = 1


class WatchdogFileSource(TimerSource):
    """Observer threads queue raw notifications; `poll` folds each window's writes per file and
    returns finished events, in the order things first happened."""

    name = "file"
    module = "watchdog"

    def __init__(self, paths: list[str], exclude: list[str] = (), coalesce_seconds: float = 1.0,
                 max_pending: int = 100_000, max_queued: int = 200_000):
        self.paths = [p for p in paths if p]
        self.exclude = [prefix_bytes(p) for p in exclude if p]
        self.coalesce_seconds, self.max_pending, self.max_queued = coalesce_seconds, max_pending, max_queued
        self._raw: deque = deque()  # observer thread -> poll(); bounded by max_queued
        self._pending: dict[tuple, _Pending] = {}  # insertion-ordered: the order of first sight
        self._window_start = 0.0
        self._observer = None
        self.overflow = 0

    def start(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError as exc:
            from .errors import SensorError

            raise SensorError(f"the watchdog package is missing: {exc}", hint="pip install watchdog") from None
        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type not in _KINDS:
                    return
                if len(source._raw) >= source.max_queued:  # poll() fell behind: count, never grow
                    source.overflow += 1
                    return
                source._raw.append((event.event_type, event.is_directory, event.src_path,
                                    getattr(event, "dest_path", "")))

        # watchdog 7 warns once per unreadable subdirectory it meets while adding recursive watches
        warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
        self._observer = Observer()
        handler = Handler()
        watched = 0
        for p in self.paths:
            base = p.rstrip("*")  # /etc/cron*: watch /etc, keep the names that start so
            target = base if os.path.isdir(base) and not p.endswith("*") else os.path.dirname(base)
            if not os.path.isdir(target) or not os.access(target, os.R_OK | os.X_OK):
                log.warning("watched path %s does not exist or is not readable: not watched", p)
                continue
            try:
                self._observer.schedule(handler, target, recursive=True)
            except OSError as exc:  # e.g. out of inotify watches
                log.warning("cannot watch %s: %s", p, exc)
                continue
            watched += 1
        self._wanted = [prefix_bytes(p) for p in self.paths]
        self._observer.start()
        log.info("watchdog (%s) watching %d paths", type(self._observer).__name__, watched)
        return self

    def _keep(self, path: bytes) -> bool:
        with_slash = path + b"/"  # a watched directory itself, e.g. a rename of /tmp/x
        return (any(path.startswith(w) or with_slash == w for w in self._wanted)
                and not any(path.startswith(x) or with_slash == x for x in self.exclude))

    def poll(self) -> list[dict]:
        while self._raw:
            kind, is_dir, src, dst = self._raw.popleft()
            self._fold(kind, is_dir, os.fsencode(src), os.fsencode(dst) if dst else None)
        now = time.monotonic()
        if not self._pending or now - self._window_start < self.coalesce_seconds:
            return []
        out = [self._event(p) for p in self._pending.values()]
        self._pending.clear()
        return out

    def _fold(self, kind: str, is_dir: bool, src: bytes, dst: bytes | None):
        if kind == "moved":
            if not (self._keep(src) or self._keep(dst)):
                return
            self._add(("rename", src, dst), _Pending("rename", dst, src))
        elif not self._keep(src):
            return
        elif kind == "created":
            self._add(("mkdir" if is_dir else "create", src), _Pending("mkdir" if is_dir else "create", src))
        elif kind == "deleted":
            self._add(("rmdir" if is_dir else "delete", src), _Pending("rmdir" if is_dir else "delete", src))
        elif kind in ("modified", "attrib") and not is_dir:  # a directory's own change is its entries'
            key = ("write", src)
            if key in self._pending:
                self._pending[key].count += 1
            else:
                self._add(key, _Pending("write", src))

    def _add(self, key: tuple, p: _Pending):
        if not self._pending:
            self._window_start = time.monotonic()
        if key in self._pending:  # the same create or delete twice in a window: once is the truth
            return
        if len(self._pending) >= self.max_pending:
            self.overflow += 1
            return
        self._pending[key] = p

    def _event(self, p: _Pending) -> dict:
        """Through the one builder of file events (sensor.files), with what stat says now."""
        try:
            st = os.lstat(p.path)
        except OSError:
            st = None  # gone already (deleted, renamed again)
        rec = FileActivity(0, None, None, None, p.action, p.path, p.original, count=p.count,
                           **({} if st is None else {"dev": _kernel_dev(st.st_dev), "ino": st.st_ino,
                                                     "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}))
        event = file_event(rec, None)  # the OS does not say who
        event["event"]["module"] = "watchdog"
        file = event["file"]
        file.pop("write_bytes", None)  # not known here
        if st is not None:
            file["size"] = st.st_size
        elif p.action in ("create", "delete", "write"):
            file.setdefault("type", "file")
        return event

    def stats(self) -> dict:
        return {"lost_kernel": 0, "lost_user": self.overflow, "queue_bytes": 0}

    def detach(self):
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None
        self.coalesce_seconds = 0  # the drain after detach takes the last window too

    def close(self):
        self.detach()


def _kernel_dev(st_dev: int) -> int:
    """st_dev in the kernel's encoding (major << 20 | minor), as the eBPF records carry it; on
    Windows (no major/minor) the volume serial number as it is."""
    if not hasattr(os, "major"):
        return st_dev
    return os.major(st_dev) << 20 | os.minor(st_dev)
