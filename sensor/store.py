"""The local store: rotating JSON Lines segments, zstd-compressed when closed, size-bounded."""
from __future__ import annotations

import errno
import io
import logging
import os
import re
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import orjson
import zstandard

from .backend import system
from .errors import StoreError
from .schema import parse_time as parse_timestamp  # noqa: F401  (part of the store's API)

log = logging.getLogger("sensor.store")

FLUSH_BYTES = 256 << 10  # flush early once this much is buffered, whatever the interval
_SEGMENT = re.compile(r"^events-.+\.jsonl(\.zst)?$")


def segments(data_dir) -> list[Path]:
    """Every segment, oldest first; of one stem caught mid-compression, the .zst sorts first."""
    d = Path(data_dir) / "events"
    try:
        names = [n for n in os.listdir(d) if _SEGMENT.match(n)]
    except FileNotFoundError:
        return []
    return [d / n for n in sorted(names, key=lambda n: (_stem(n), not n.endswith(".zst")))]


def compress(path: Path) -> Path:
    """PATH -> PATH.zst (root-only), durable before the plain file goes; OSError leaves the plain
    file as it was."""
    target = path.with_name(path.name + ".zst")
    tmp = path.with_name(path.name + ".zst.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | system.OPEN_FLAGS, 0o600)
        with open(fd, "wb") as out, open(path, "rb") as src:
            zstandard.ZstdCompressor(level=3).copy_stream(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, target)
        system.fsync_dir(path.parent)  # the .zst's name is durable before the plain copy goes
        path.unlink()
        return target
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _stem(name: str) -> str:
    return name.split(".jsonl", 1)[0]


def _private_dir(path: Path):
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode loses to the umask, and a pre-existing dir keeps its own


def _in_use(path: Path) -> bool:
    """Whether a live writer holds this plain segment (the kernel drops a killed one's flock)."""
    try:
        with open(path, "rb") as f:
            system.lock(f, wait=False)
        return False
    except OSError:  # held by a writer, gone meanwhile, or not ours to touch
        return True


def _cut_partial(path: Path) -> bool:
    """Cuts a torn last line (a writer killed mid-write) off a plain segment; True if it had one."""
    with open(path, "rb+") as f:
        pos = f.seek(0, os.SEEK_END)
        if pos == 0 or os.pread(f.fileno(), 1, pos - 1) == b"\n":
            return False
        while pos > 0:  # backwards in blocks: segments are large, the torn line is short
            start = max(0, pos - (64 << 10))
            f.seek(start)
            nl = f.read(pos - start).rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return True
            pos = start
        f.truncate(0)
        return True


class Store:
    """Buffers events, appends them to the open segment, rotates, compresses and prunes."""

    def __init__(self, data_dir, *, segment_bytes=64 << 20, segment_seconds=3600.0,
                 retention_bytes=1 << 30, flush_interval=1.0, pending_bytes=64 << 20,
                 on_closed=None, on_delete=None):
        self.data_dir = Path(data_dir)
        # on_closed(path): a segment was closed and compressed; on_delete(path): retention is
        # about to delete one (an uploader counts it when it was not uploaded yet)
        self.on_closed, self.on_delete = on_closed, on_delete
        self.events_dir = self.data_dir / "events"
        try:
            _private_dir(self.data_dir)
            _private_dir(self.events_dir)
        except OSError as exc:
            raise StoreError(f"cannot use data dir {self.data_dir}: {exc.strerror}",
                             hint="choose another with --data-dir, or run as root") from None
        self.segment_bytes, self.segment_seconds = segment_bytes, segment_seconds
        self.retention_bytes, self.flush_interval = retention_bytes, flush_interval
        self.pending_bytes = pending_bytes  # kept for retry while the disk refuses, oldest dropped first
        self.written = self.dropped = self.recovered_partial = 0
        self.last_error: str | None = None
        self._warned: set = set()
        self._failing = False
        self._buf: deque[bytes] = deque()  # one serialized line per event
        self._buf_bytes = 0
        self._fd: int | None = None  # the open segment, its path, bytes and monotonic start
        self._path: Path | None = None
        self._seg_size, self._opened = 0, 0.0
        self._last_stamp = datetime.min.replace(tzinfo=timezone.utc)
        self._n = 0
        self._due = time.monotonic() + flush_interval
        self._closed = False
        self._recover()
        self._retain()

    def write(self, event: dict) -> None:
        try:
            line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            self.dropped += 1
            self._warn(("encode", str(exc)), f"store: event dropped, not serializable: {exc}")
            return
        if self._closed:
            self.dropped += 1
            self._warn(("closed",), "store: event written after close() dropped")
            return
        self._buf.append(line)
        self._buf_bytes += len(line)
        if time.monotonic() >= self._due:
            self.tick()
        elif self._buf_bytes >= min(FLUSH_BYTES, self.pending_bytes) and not self._failing:
            self.flush()  # a failing disk is retried on the interval, not on every write
        if self._buf_bytes > self.pending_bytes:
            self._bound_pending()

    def tick(self) -> None:
        """Time-based flush and age rotation; cheap enough to call on every loop."""
        now = time.monotonic()
        if self._fd is not None and now - self._opened >= self.segment_seconds:
            self.rotate()
        elif self._buf and now >= self._due:
            self.flush()

    def flush(self) -> None:
        """Hands every buffered event to the open segment, rotating at segment_bytes."""
        self._due = time.monotonic() + self.flush_interval
        while self._buf:
            if self._fd is None and not self._open():
                return
            # take whole lines up to the segment's room; a line longer than a segment goes alone
            lines, size, room = [], 0, self.segment_bytes - self._seg_size
            for line in self._buf:
                if size + len(line) > room and (lines or self._seg_size):
                    break
                lines.append(line)
                size += len(line)
            if not lines:
                self._rotate()
                continue
            try:
                n = self._append(lines)
            except OSError as exc:
                self._failed(exc, "write", self._path)
                return
            if n == 0:  # a regular file takes less than asked only when out of space
                self._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "write", self._path)
                return
            if self._seg_size >= self.segment_bytes:
                self._rotate()
        if self._failing:
            self._failing = False
            self._warned.clear()  # warn again if the disk fills again
            log.warning("store: writing again to %s (%d events dropped so far)", self.events_dir, self.dropped)

    def _append(self, lines: list[bytes]) -> int:
        """Writes lines to the open segment; returns how many went in whole."""
        data = b"".join(lines)
        n = os.write(self._fd, data)
        k = len(lines)
        if n < len(data):
            # A filling disk took part of a line: cut it off so every segment holds whole lines,
            # and keep that line buffered for the retry.
            k, whole = 0, 0
            while whole + len(lines[k]) <= n:
                whole += len(lines[k])
                k += 1
            try:
                os.ftruncate(self._fd, self._seg_size + whole)
            except OSError:
                whole = self.segment_bytes  # the torn line stays last: continue in a new segment
            n = whole
        self._seg_size += n
        for _ in range(k):
            self._buf_bytes -= len(self._buf.popleft())
        self.written += k
        return k

    def _bound_pending(self):
        while self._buf_bytes > self.pending_bytes and len(self._buf) > 1:
            self._buf_bytes -= len(self._buf.popleft())
            self.dropped += 1

    def _failed(self, exc: OSError, what: str, path):
        self._failing = True
        self._error(exc, what, path, f"events are kept in memory and retried, the oldest dropped"
                                     f" beyond {self.pending_bytes >> 10:,} KiB")

    def _error(self, exc: OSError, what: str, path, consequence: str):
        self.last_error = f"cannot {what} {path}: {exc.strerror or exc}"
        self._warn((what, exc.errno), f"store: {self.last_error}; {consequence}")

    def _warn(self, key: tuple, msg: str):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _open(self) -> bool:
        # names sort chronologically, even if the wall clock steps back
        self._last_stamp = max(datetime.now(timezone.utc), self._last_stamp + timedelta(microseconds=1))
        self._n += 1
        name = f"events-{self._last_stamp:%Y%m%dT%H%M%S.%fZ}-{os.getpid()}-{self._n:04d}.jsonl"
        path = self.events_dir / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | system.OPEN_FLAGS, 0o600)
        except OSError as exc:
            self._failed(exc, "create", path)
            return False
        try:
            system.lock(fd)  # tells another store's recovery that this one is live
        except OSError:
            pass  # a filesystem without locks: recovery by a second store is then not prevented
        self._fd, self._path, self._seg_size, self._opened = fd, path, 0, time.monotonic()
        return True

    def rotate(self) -> None:
        """Flushes, then closes and compresses the open segment; the next flush opens a new one."""
        self.flush()
        self._rotate()

    def _rotate(self):
        if self._fd is None:
            return
        fd, path, self._fd, self._path = self._fd, self._path, None, None
        try:
            os.close(fd)
            if self._seg_size == 0:
                path.unlink(missing_ok=True)
            self._recover()  # compresses it, and retries any a full disk left plain
            self._retain()
        except OSError as exc:
            self._error(exc, "rotate", path, "retried at the next rotation")

    def _compress(self, path: Path) -> bool:
        try:
            target = compress(path)
        except OSError as exc:
            self._error(exc, "compress", path, "the plain segment is kept and retried at the next rotation")
            return False
        if self.on_closed is not None:
            self.on_closed(target)
        return True

    def _recover(self):
        """Compresses closed plain segments: a killed run's (minus a torn last line) or a full disk's."""
        for path in segments(self.data_dir):
            if path.name.endswith(".zst") or path == self._path or _in_use(path):
                continue
            try:
                if _cut_partial(path):
                    self.recovered_partial += 1
                    log.warning("store: cut a partial last line off %s (its writer was killed)", path.name)
                if path.stat().st_size == 0:
                    path.unlink()
                    continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._error(exc, "recover", path, "left as it is")
                continue
            self._compress(path)

    def _retain(self):
        """Deletes the oldest closed segments until they total at most retention_bytes."""
        closed = []
        for p in segments(self.data_dir):
            if p == self._path or (not p.name.endswith(".zst") and _in_use(p)):
                continue
            try:
                closed.append((p, p.stat().st_size))
            except FileNotFoundError:
                pass
        total = sum(size for _, size in closed)
        for p, size in closed:
            if total <= self.retention_bytes:
                break
            if self.on_delete is not None:
                self.on_delete(p)
            p.unlink(missing_ok=True)
            total -= size

    def close(self) -> None:
        if self._closed:
            return
        self.rotate()
        if self._buf:
            self.dropped += len(self._buf)
            log.warning("store: %d events could not be written before close (see above)", len(self._buf))
            self._buf.clear()
            self._buf_bytes = 0
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- reading -------------------------------------------------------------------------------

def read_events(data_dir, *, follow=False, since_ns=None, poll_interval=0.2) -> Iterator[dict]:
    """Stored events in order, across compressed and plain segments; `follow` tails like -F."""
    events_dir = Path(data_dir) / "events"
    # stem -> [lines consumed, byte offset in the plain file, finished]; a stem is one segment
    # whether plain or compressed, so a segment compressed while followed continues by line count
    state: dict[str, list] = {}
    while True:
        progressed = False
        stems = {_stem(p.name) for p in segments(data_dir)}
        stems.update(s for s, st in state.items() if not st[2])
        for stem in sorted(stems):
            st = state.setdefault(stem, [0, 0, False])
            if st[2]:
                continue
            before = st[0]
            yield from _read_segment(events_dir, stem, st, since_ns)
            progressed |= st[0] != before
        if not follow:
            return
        if not progressed:
            time.sleep(poll_interval)


def _read_segment(events_dir: Path, stem: str, st: list, since_ns) -> Iterator[dict]:
    zst, plain = events_dir / f"{stem}.jsonl.zst", events_dir / f"{stem}.jsonl"
    # The .zst is renamed into place before the plain copy is unlinked, so trying .zst, plain,
    # .zst again finds one of them unless retention deleted the segment.
    for path in (zst, plain, zst):
        try:
            f = open(path, "rb")
            break
        except FileNotFoundError:
            pass
    else:
        st[2] = True
        return
    with f:
        if path is plain:
            f.seek(st[1])
            for line in f:
                if not line.endswith(b"\n"):
                    break  # still being written, or torn by a killed writer
                st[0] += 1
                st[1] += len(line)
                event = _decode(line, path, st[0], since_ns)
                if event is not None:
                    yield event
            return
        reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True))
        try:
            for lineno, line in enumerate(reader, 1):
                if lineno <= st[0]:
                    continue  # yielded from the plain copy before it was compressed
                st[0] = lineno
                event = _decode(line, path, lineno, since_ns)
                if event is not None:
                    yield event
        except zstandard.ZstdError as exc:
            log.warning("%s: unreadable after line %d (%s), skipped", path, st[0], exc)
        st[2] = True


def _decode(line: bytes, path: Path, lineno: int, since_ns) -> dict | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        log.warning("%s:%d: not a JSON event, skipped", path, lineno)
        return None
    if since_ns is not None:
        try:
            if parse_timestamp(event["@timestamp"]) < since_ns:
                return None
        except (KeyError, AttributeError, TypeError, ValueError):
            pass  # no usable @timestamp: not known to be earlier, so kept
    return event
