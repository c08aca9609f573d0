"""The local store: rotating JSON Lines segments, zstd-compressed when closed, size-bounded."""
from __future__ import annotations

import errno
import io
import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson
import zstandard

from .errors import StoreError
from .schema import parse_time as parse_timestamp  # noqa: F401  (part of the store's API)

log = logging.getLogger("sensor.store")

MAX_PENDING = 64 << 20  # unwritable bytes kept for retry (full disk) before dropping oldest
_SEGMENT = re.compile(r"^events-.*\.jsonl(\.zst)?$")


def segments(data_dir) -> list[Path]:
    """Every segment, oldest first (names sort chronologically)."""
    d = Path(data_dir) / "events"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _SEGMENT.match(p.name)), key=lambda p: _stem(p))


def _stem(p: Path) -> str:
    return p.name.split(".jsonl", 1)[0]


def _private_dir(path: Path):
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class Store:
    def __init__(self, data_dir, *, segment_bytes=64 << 20, segment_seconds=3600.0,
                 retention_bytes=1 << 30, flush_interval=1.0):
        self.data_dir = Path(data_dir)
        self.events_dir = self.data_dir / "events"
        try:
            _private_dir(self.data_dir)
            _private_dir(self.events_dir)
        except OSError as exc:
            raise StoreError(f"cannot use data dir {self.data_dir}: {exc.strerror}",
                             hint="choose another with --data-dir, or run as root") from None
        self.segment_bytes, self.segment_seconds = segment_bytes, segment_seconds
        self.retention_bytes, self.flush_interval = retention_bytes, flush_interval
        self.written = self.dropped = self.recovered_partial = 0
        self.last_error: str | None = None
        self._warned: set[str] = set()
        self._buf: list[bytes] = []
        self._buf_events: list[int] = []  # events per buffered chunk, for drop counting
        self._buf_bytes = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._seg_size = 0
        self._opened = 0.0
        self._last_flush = time.monotonic()
        self._n = 0
        self._closed = False
        self._recover()

    # -- writing ---------------------------------------------------------------------------

    def write(self, event: dict) -> None:
        try:
            line = orjson.dumps(event) + b"\n"
        except TypeError as exc:
            self.dropped += 1
            self._warn(f"event not serializable: {exc}")
            return
        self._buf.append(line)
        self._buf_events.append(1)
        self._buf_bytes += len(line)
        if self._buf_bytes >= 256 << 10 or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def tick(self) -> None:
        now = time.monotonic()
        if self._buf and now - self._last_flush >= self.flush_interval:
            self.flush()
        if self._fd is not None and now - self._opened >= self.segment_seconds:
            self.rotate()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        while self._buf:
            if self._fd is None and not self._open():
                break
            # fill the open segment up to segment_bytes, at line boundaries (at least one line)
            room, n, size = self.segment_bytes - self._seg_size, 0, 0
            while n < len(self._buf) and (n == 0 or size + len(self._buf[n]) <= room):
                size += len(self._buf[n])
                n += 1
            data = b"".join(self._buf[:n])
            try:
                written = os.write(self._fd, data)
            except OSError as exc:
                self._failed(exc)
                break
            # a short write (disk filling up) leaves the rest buffered for a retry
            self._consume(written)
            self._seg_size += written
            if written < len(data):
                self._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
                break
            if self._seg_size >= self.segment_bytes or self._buf:
                self.rotate()
        self._bound_pending()

    def _consume(self, nbytes: int):
        """Drops `nbytes` of written data from the front of the buffer, counting whole events."""
        while nbytes and self._buf:
            head = self._buf[0]
            if len(head) <= nbytes:
                nbytes -= len(head)
                self._buf_bytes -= len(head)
                self.written += self._buf_events[0]
                self._buf.pop(0)
                self._buf_events.pop(0)
            else:
                self._buf[0] = head[nbytes:]
                self._buf_bytes -= nbytes
                nbytes = 0

    def _bound_pending(self):
        while self._buf_bytes > MAX_PENDING and len(self._buf) > 1:
            # never drop the head: it may be half written already
            chunk = self._buf.pop(1)
            self._buf_bytes -= len(chunk)
            self.dropped += self._buf_events.pop(1)

    def _failed(self, exc: OSError):
        self.last_error = f"{self._path or self.events_dir}: {exc.strerror or exc}"
        self._warn(self.last_error)

    def _warn(self, msg: str):
        if msg not in self._warned:
            self._warned.add(msg)
            log.warning("store: %s (events are kept in memory and retried)", msg)

    def _open(self) -> bool:
        self._n += 1
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.events_dir / f"events-{stamp}-{os.getpid()}-{self._n:04d}.jsonl"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._failed(exc)
            return False
        self._path, self._seg_size, self._opened = path, 0, time.monotonic()
        return True

    def rotate(self) -> None:
        """Closes the open segment, compresses it, applies retention."""
        if self._fd is None:
            return
        os.close(self._fd)
        path, self._fd, self._path = self._path, None, None
        if self._seg_size == 0:
            path.unlink(missing_ok=True)
        else:
            self._compress(path)
        self._retain()

    def _compress(self, path: Path) -> bool:
        target = path.with_name(path.name + ".zst")
        tmp = path.with_name(path.name + ".zst.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out, open(path, "rb") as src:
                zstandard.ZstdCompressor(level=3).copy_stream(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, target)
            path.unlink()
            return True
        except OSError as exc:
            # the plain segment stays: still readable, compressed on a later start
            tmp.unlink(missing_ok=True)
            self._failed(exc)
            return False

    def _retain(self):
        closed = [p for p in segments(self.data_dir) if p.name.endswith(".zst")]
        sizes = {p: p.stat().st_size for p in closed}
        total = sum(sizes.values())
        for p in closed:
            if total <= self.retention_bytes:
                break
            p.unlink(missing_ok=True)
            total -= sizes[p]

    def _recover(self):
        """Compresses segments a killed run left open, cutting a partial last line."""
        for path in segments(self.data_dir):
            if path.name.endswith(".zst"):
                continue
            with open(path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
                    self.recovered_partial += 1
                    log.warning("store: cut a partial last line from %s (killed writer)", path.name)
            if path.stat().st_size == 0:
                path.unlink()
            else:
                self._compress(path)
        for tmp in self.events_dir.glob("*.zst.tmp"):
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self.rotate()
        self.dropped += sum(self._buf_events)  # what a full disk never let us write
        self._buf.clear()
        self._buf_events.clear()
        self._buf_bytes = 0
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- reading -------------------------------------------------------------------------------

def _lines(path: Path) -> Iterator[bytes]:
    """Complete lines of a segment; a plain segment's unterminated tail is not yet a line."""
    with open(path, "rb") as f:
        if path.name.endswith(".zst"):
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))
            yield from reader
            return
        for line in f:
            if line.endswith(b"\n"):
                yield line


def _events(path: Path, lines: Iterator[bytes], skip: int, since_ns, counter: list) -> Iterator[dict]:
    for lineno, line in enumerate(lines, 1):
        counter[0] = lineno
        if lineno <= skip:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("%s:%d: not a JSON event, skipped", path.name, lineno)
            continue
        if since_ns is not None and parse_timestamp(event.get("@timestamp", "1970-01-01T00:00:00Z")) < since_ns:
            continue
        yield event


def read_events(data_dir, *, follow=False, since_ns=None, poll_interval=0.2) -> Iterator[dict]:
    """Stored events in order, across compressed and plain segments; `follow` tails like -F."""
    done: dict[str, int] = {}  # segment stem -> lines already yielded
    while True:
        progressed = False
        for path in segments(data_dir):
            stem = _stem(path)
            if path.name.endswith(".zst") and stem in done and done[stem] < 0:
                continue  # finished compressed segment
            skip = abs(done.get(stem, 0))
            counter = [skip]
            try:
                for event in _events(path, _lines(path), skip, since_ns, counter):
                    progressed = True
                    yield event
            except FileNotFoundError:
                pass  # compressed or removed meanwhile: the next pass reads the .zst
            done[stem] = -counter[0] if path.name.endswith(".zst") else counter[0]
        if not follow:
            return
        if not progressed:
            time.sleep(poll_interval)
