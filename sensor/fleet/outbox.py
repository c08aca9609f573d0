"""The durable outbox under DATA_DIR/outbox: append-only segments of records, an acked position."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..backend import system

log = logging.getLogger("sensor.fleet.outbox")

# A record is one line: `SUBJECT MSGID JSON\n`. orjson escapes every control character, so
# neither a newline nor a space can end the JSON early, and subjects and ids are made space-free.
SEGMENT_SUFFIX = ".out"


class Outbox:
    """Records wait here until the broker acknowledges them, in order, across restarts.

    Segments are named by a counter (0000000000000001.out, ...); `acked` holds the segment and
    byte offset up to which JetStream has acknowledged. Segments behind it are deleted. What
    would grow the outbox past `max_bytes` is refused and counted in `overflow`.
    """

    def __init__(self, directory, *, max_bytes: int = 256 << 20, segment_bytes: int = 8 << 20):
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.overflow = 0  # records refused because the outbox was full
        self.recovered_partial = 0
        self._acked = self._load_acked()  # (segment, offset)
        self._segments = sorted(int(p.name[:-len(SEGMENT_SUFFIX)]) for p in self.dir.glob("*" + SEGMENT_SUFFIX)
                                if p.name[:-len(SEGMENT_SUFFIX)].isdigit())
        for n in [n for n in self._segments if n < self._acked[0]]:
            self._path(n).unlink(missing_ok=True)
            self._segments.remove(n)
        if not self._segments:
            self._segments.append(max(self._acked[0], 1))
        if self._acked[0] not in self._segments:  # nothing of the acked segment left: start afresh
            self._acked = (self._segments[0], 0)
        self._cut_partial(self._segments[-1])
        self._wfd = os.open(self._path(self._segments[-1]), os.O_WRONLY | os.O_CREAT | os.O_APPEND | system.OPEN_FLAGS,
                            0o600)
        self._wsize = os.fstat(self._wfd).st_size
        self.size = sum(self._path(n).stat().st_size for n in self._segments) - self._acked[1]
        self.pending = sum(self._count(n) for n in self._segments)  # records not yet acknowledged
        self._read = self._acked  # where the next read starts: records before it are in flight
        self._rfd: tuple[int, int] | None = None  # (segment, fd)

    # -- writing (one thread) ------------------------------------------------------------------

    def append(self, records: list[bytes]) -> int:
        """Appends whole records in order while they fit; returns how many were taken."""
        room, take, size = self.max_bytes - self.size, 0, 0
        for r in records:
            if size + len(r) > room:
                break
            size += len(r)
            take += 1
        if take < len(records):
            self.overflow += len(records) - take
        data = b"".join(records[:take])
        if not data:
            return 0
        os.write(self._wfd, data)  # O_APPEND: a killed writer leaves at most one torn last line
        self._wsize += len(data)
        self.size += len(data)
        self.pending += take
        if self._wsize >= self.segment_bytes:
            os.close(self._wfd)
            n = self._segments[-1] + 1
            self._segments.append(n)
            self._wfd = os.open(self._path(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND | system.OPEN_FLAGS, 0o600)
            self._wsize = 0
        return take

    # -- reading and acknowledging -------------------------------------------------------------

    def read(self, max_records: int, chunk: int = 256 << 10) -> list[tuple[tuple[int, int], bytes]]:
        """The next records after those already handed out, each with the position after it.
        Reads `chunk` bytes at a time (a backlog is not split whole to take one window of it)."""
        out: list = []
        seg, off = self._read
        while len(out) < max_records:
            data = os.pread(self._reader(seg), chunk, off)
            end = data.rfind(b"\n") + 1
            if end:
                for line in data[:end].splitlines(keepends=True):
                    off += len(line)
                    out.append(((seg, off), line))
                    if len(out) >= max_records:
                        break
                continue  # perhaps more of this segment
            if len(data) == chunk:  # a record longer than the chunk
                chunk *= 2
                continue
            if seg == self._segments[-1]:
                break
            seg, off = self._segments[self._segments.index(seg) + 1], 0  # done: the writer moved on
        self._read = (seg, off)
        return out

    def rewind(self):
        """Reads again from the acknowledged position (after a failed send)."""
        self._read = self._acked

    def ack(self, pos: tuple[int, int], n: int):
        """Everything up to `pos` (n records) is acknowledged: frees fully sent segments."""
        if pos <= self._acked:
            return
        if pos[0] != self._segments[-1] and pos[1] >= self._path(pos[0]).stat().st_size:
            pos = (self._segments[self._segments.index(pos[0]) + 1], 0)  # that segment is all sent
        seg, off = self._acked
        freed = 0
        while seg < pos[0]:
            freed += self._path(seg).stat().st_size - off
            self._close_reader(seg)
            self._path(seg).unlink(missing_ok=True)
            self._segments.remove(seg)
            seg, off = self._segments[0], 0
        freed += pos[1] - off
        self.size -= freed
        self.pending -= n
        self._acked = pos
        if self._read < pos:
            self._read = pos

    def save(self):
        """Persists the acknowledged position (atomically: a crash keeps the old or the new)."""
        tmp = self.dir / "acked.tmp"
        tmp.write_text(f"{self._acked[0]} {self._acked[1]}\n")
        os.replace(tmp, self.dir / "acked")

    def close(self):
        self.save()
        os.close(self._wfd)
        if self._rfd is not None:
            os.close(self._rfd[1])
            self._rfd = None

    # -- internals -----------------------------------------------------------------------------

    def _path(self, n: int) -> Path:
        return self.dir / f"{n:016d}{SEGMENT_SUFFIX}"

    def _load_acked(self) -> tuple[int, int]:
        try:
            seg, off = (self.dir / "acked").read_text().split()
            return int(seg), int(off)
        except FileNotFoundError:
            return (0, 0)
        except ValueError:
            log.warning("outbox: %s/acked unreadable; sending the whole outbox again (the stream "
                        "drops duplicates)", self.dir)
            return (0, 0)

    def _reader(self, seg: int) -> int:
        if self._rfd is None or self._rfd[0] != seg:
            if self._rfd is not None:
                os.close(self._rfd[1])
            self._rfd = (seg, os.open(self._path(seg), os.O_RDONLY | system.OPEN_FLAGS))
        return self._rfd[1]

    def _close_reader(self, seg: int):
        if self._rfd is not None and self._rfd[0] == seg:
            os.close(self._rfd[1])
            self._rfd = None

    def _count(self, n: int) -> int:
        start = self._acked[1] if n == self._acked[0] else 0
        with open(self._path(n), "rb") as f:
            f.seek(start)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def _cut_partial(self, n: int):
        """A killed sensor may have left half a record last: cut it (it was never sent)."""
        path = self._path(n)
        if not path.exists():
            return
        data_end = path.stat().st_size
        if data_end == 0:
            return
        with open(path, "rb+") as f:
            f.seek(max(0, data_end - (1 << 20)))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            nl = tail.rfind(b"\n")
            f.truncate(data_end - len(tail) + nl + 1 if nl >= 0 else max(0, data_end - len(tail)))
            self.recovered_partial += 1
            log.warning("outbox: cut a partial last record off %s (the sensor was killed mid-write)", path.name)
