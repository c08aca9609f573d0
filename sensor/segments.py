"""syscalls.parquet as a chain of closed Parquet segments, joined by one footer when the trace ends."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"
INDEX_SUFFIX = ".segments"  # beside the file, hidden: one entry per segment
ENTRY = struct.Struct("<QQ")  # where a segment ends, and the park file's read offset then

# A segment is a whole Parquet file (magic, row groups, footer, magic) appended to the one
# file. pyarrow writes every segment's offsets from 0 (it refuses to start a file elsewhere), so
# the footer that ends a finished trace is the segments' row groups with their offsets moved to
# where each segment starts. The footers are Thrift compact protocol; the walk below copies every
# field and rewrites only the offsets (measured on a 256 Ki-row group's metadata: 1.3 ms, 5 ns a
# row; decoding and re-encoding it with thriftpy2 took 3.5 ms).
_SHIFT, _ORDINAL = "shift", "ordinal"
_COLUMN_META = {9: _SHIFT, 10: _SHIFT, 11: _SHIFT, 14: _SHIFT}  # data, index, dictionary page, bloom
_COLUMN_CHUNK = {3: _COLUMN_META, 4: _SHIFT, 6: _SHIFT}  # meta_data, offset index, column index
_ROW_GROUP = {1: [_COLUMN_CHUNK], 5: _SHIFT, 7: _ORDINAL}  # columns, file_offset, ordinal
_BOOL_TRUE, _BOOL_FALSE, _I16, _I64, _LIST, _STRUCT = 1, 2, 4, 6, 9, 12


class SegmentError(ValueError):
    """Bytes that are not a segment's footer (a torn write, a power cut's zeros)."""


def _varint(b, p: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if p >= len(b) or shift > 63:
            raise SegmentError("truncated varint")
        x = b[p]
        p += 1
        v |= (x & 0x7F) << shift
        if x < 0x80:
            return v, p
        shift += 7


def _uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _zigzag(v: int) -> bytes:
    return _uvarint((v << 1) ^ (v >> 63))


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _skip(b, p: int, t: int) -> int:
    """Past one value of compact type t."""
    if t in (_BOOL_TRUE, _BOOL_FALSE):
        return p
    if t == 3:
        return p + 1
    if t in (4, 5, 6):
        return _varint(b, p)[1]
    if t == 7:
        return p + 8
    if t == 8:
        n, p = _varint(b, p)
        return p + n
    if t in (9, 10):
        n, et, p = _list_header(b, p)
        for _ in range(n):
            p = p + 1 if et in (_BOOL_TRUE, _BOOL_FALSE) else _skip(b, p, et)
        return p
    if t == 11:
        n, p = _varint(b, p)
        if n:
            kv = b[p]
            p += 1
            for _ in range(n):
                p = _skip(b, _skip(b, p, kv >> 4), kv & 0x0F)
        return p
    if t == _STRUCT:
        fid = 0
        while True:
            fid, ft, p = _field_header(b, p, fid)
            if ft is None:
                return p
            p = _skip(b, p, ft)
    raise SegmentError(f"thrift type {t}")


def _list_header(b, p: int) -> tuple[int, int, int]:
    if p >= len(b):
        raise SegmentError("truncated list")
    h = b[p]
    n, et = h >> 4, h & 0x0F
    p += 1
    if n == 15:
        n, p = _varint(b, p)
    return n, et, p


def _field_header(b, p: int, last: int) -> tuple[int, int | None, int]:
    if p >= len(b):
        raise SegmentError("truncated struct")
    h = b[p]
    p += 1
    if h == 0:
        return last, None, p
    if h >> 4:
        return last + (h >> 4), h & 0x0F, p
    u, p = _varint(b, p)
    return _unzigzag(u), h & 0x0F, p


def _put_field(out: bytearray, fid: int, last: int, ftype: int):
    if 0 < fid - last <= 15:
        out.append((fid - last) << 4 | ftype)
    else:
        out.append(ftype)
        out += _zigzag(fid)


def _list_head(n: int, et: int) -> bytes:
    return bytes([n << 4 | et]) if n < 15 else bytes([0xF0 | et]) + _uvarint(n)


def _struct(b, p: int, out: bytearray, spec: dict, base: int, ordinal: int) -> int:
    """Copies a struct from b at p to out, moving the offsets spec names by base."""
    fid = last = 0
    while True:
        fid, ft, p = _field_header(b, p, fid)
        if ft is None:
            out.append(0)
            return p
        rule = spec.get(fid)
        if rule == _ORDINAL and ft == _I16:
            p = _varint(b, p)[1]
            if ordinal < 1 << 15:  # an i16: past that the field is left out (it is optional)
                _put_field(out, fid, last, _I16)
                out += _zigzag(ordinal)
                last = fid
            continue
        _put_field(out, fid, last, ft)
        last = fid
        if rule == _SHIFT and ft == _I64:
            u, p = _varint(b, p)
            out += _zigzag(_unzigzag(u) + base)
        elif isinstance(rule, dict) and ft == _STRUCT:
            p = _struct(b, p, out, rule, base, ordinal)
        elif isinstance(rule, list) and ft == _LIST:
            n, et, p = _list_header(b, p)
            out += _list_head(n, et)
            for _ in range(n):
                p = _struct(b, p, out, rule[0], base, ordinal)
        else:
            end = _skip(b, p, ft)
            out += b[p:end]
            p = end


def row_groups(footer: bytes, base: int, first_ordinal: int) -> tuple[list[bytes], int]:
    """A segment's row groups (encoded, offsets moved by base) and its row count."""
    groups, rows, fid, p = [], 0, 0, 0
    while True:
        fid, ft, p = _field_header(footer, p, fid)
        if ft is None:
            return groups, rows
        if fid == 3 and ft == _I64:
            u, p = _varint(footer, p)
            rows = _unzigzag(u)
        elif fid == 4 and ft == _LIST:
            n, _, p = _list_header(footer, p)
            for i in range(n):
                out = bytearray()
                p = _struct(footer, p, out, _ROW_GROUP, base, first_ordinal + i)
                groups.append(bytes(out))
        else:
            p = _skip(footer, p, ft)


def joined_footer(template: bytes, groups: list[bytes], rows: int) -> bytes:
    """The template footer (schema, key-value metadata) with these row groups and rows, framed
    as a file's end: footer, its length, magic."""
    out, fid, last, p = bytearray(), 0, 0, 0
    while True:
        fid, ft, p = _field_header(template, p, fid)
        if ft is None:
            out.append(0)
            break
        end = _skip(template, p, ft)
        _put_field(out, fid, last, ft)
        last = fid
        if fid == 3:
            out += _zigzag(rows)
        elif fid == 4:
            out += _list_head(len(groups), _STRUCT)
            for g in groups:
                out += g
        else:
            out += template[p:end]
        p = end
    return bytes(out) + struct.pack("<I", len(out)) + MAGIC


def _footer_of(data) -> bytes:
    """The footer of a whole segment's bytes (ends with length and magic)."""
    if len(data) < 12 or bytes(data[-4:]) != MAGIC or bytes(data[:4]) != MAGIC:
        raise SegmentError("no magic")
    n = struct.unpack("<I", bytes(data[-8:-4]))[0]
    if n > len(data) - 12:
        raise SegmentError("footer longer than the segment")
    return bytes(data[-8 - n:-8])


class SegmentWriter:
    """Appends closed segments to one file and indexes each; `seal` ends it as one Parquet file."""

    def __init__(self, path: Path, schema: pa.Schema, options: dict, after: Segments | None = None):
        """A new file, or (after) one whose whole segments are kept and the rest cut off."""
        self.path = Path(path)
        self.index_path = index_path(self.path)
        self.schema, self.options = schema, options
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if after else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o600)
        self._index = os.open(self.index_path, flags | os.O_APPEND, 0o600)
        if after is not None:
            os.ftruncate(self._fd, after.end)
            os.lseek(self._fd, after.end, os.SEEK_SET)
            os.ftruncate(self._index, after.index_used)
            self.end, self._template, self._groups, self.rows = after.end, after.template, list(after.groups), after.rows
            return
        self.end = 0
        self._template: bytes | None = None
        self._groups: list[bytes] = []
        self.rows = 0
        self.write(None, 0, 0)  # an empty first segment: the schema, readable from the start

    def write(self, table: pa.Table | None, row_group_size: int, cursor: int) -> int:
        """Writes a segment of table's rows in one write, then indexes it."""
        sink = pa.BufferOutputStream()
        w = pq.ParquetWriter(sink, self.schema, **self.options)
        if table is not None:
            w.write_table(table, row_group_size=row_group_size)
        w.close()
        data = sink.getvalue()
        footer = _footer_of(data)
        groups, rows = row_groups(footer, self.end, len(self._groups))
        if self._template is None:
            self._template = footer
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            done += os.write(self._fd, mv[done:])
        self.end += len(mv)
        self._groups += groups
        self.rows += rows
        self.mark(cursor)
        return self.end

    def mark(self, cursor: int):
        """Indexes the file's end with the park file's read offset (see Spill.commit)."""
        os.write(self._index, ENTRY.pack(self.end, cursor))

    def sync(self):
        """What is written reaches the disk (a power cut keeps it), data before its index."""
        os.fdatasync(self._fd)
        os.fdatasync(self._index)

    def seal(self):
        """Ends the file with one footer over every segment: one Parquet file. The index stays
        until the caller has recorded that (a kill in between: `Segments` finds the same end)."""
        os.write(self._fd, joined_footer(self._template, self._groups, self.rows))
        os.fsync(self._fd)
        self.close()

    def close(self):
        for fd in (self._fd, self._index):
            if fd >= 0:
                os.close(fd)
        self._fd = self._index = -1


def index_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name("." + path.name.replace(".parquet", "") + INDEX_SUFFIX)


class Segments:
    """The segments of an unsealed file that its index names and that are whole, in order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ends: list[int] = []
        self.cursor = 0
        self.index_used = 0  # bytes of the index up to its last good entry
        self.groups: list[bytes] = []
        self.rows = 0
        self.template: bytes | None = None
        try:
            index = index_path(self.path).read_bytes()
        except FileNotFoundError:
            index = b""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = 0
            for off in range(0, len(index) - ENTRY.size + 1, ENTRY.size):
                end, cursor = ENTRY.unpack_from(index, off)
                if end == start and self.ends:  # the park file was emptied: its offset restarts
                    self.cursor = cursor
                    self.index_used = off + ENTRY.size
                    continue
                if not start < end <= size:
                    break
                f.seek(start)
                try:
                    footer = _footer_of(f.read(end - start))  # segments are small
                    groups, rows = row_groups(footer, start, len(self.groups))
                except SegmentError:
                    break  # what follows was never completely written
                self.template = self.template or footer
                self.groups += groups
                self.rows += rows
                self.ends.append(end)
                self.cursor = cursor
                self.index_used = off + ENTRY.size
                start = end

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else 0

    def footer(self) -> bytes:
        if self.template is None:
            raise SegmentError(f"{self.path}: no whole segment")
        return joined_footer(self.template, self.groups, self.rows)


class JoinedView(io.RawIOBase):
    """An unsealed file read as the Parquet file sealing would make: its whole segments, then
    their joined footer; nothing is written."""

    def __init__(self, segments: Segments):
        self._f = open(segments.path, "rb")
        self._end = segments.end
        self._tail = segments.footer()
        self._size = self._end + len(self._tail)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._size}[whence] + offset
        return self._pos

    def size(self) -> int:
        return self._size

    def readinto(self, buf) -> int:
        n = min(len(buf), max(self._size - self._pos, 0))
        mv = memoryview(buf)
        done = 0
        if self._pos < self._end and n:
            self._f.seek(self._pos)
            done = self._f.readinto(mv[:min(n, self._end - self._pos)])
        if done < n:
            t = self._pos + done - self._end
            chunk = self._tail[t:t + n - done]
            mv[done:done + len(chunk)] = chunk
            done += len(chunk)
        self._pos += done
        return done

    def close(self):
        self._f.close()
        super().close()
