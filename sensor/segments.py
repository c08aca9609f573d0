"""syscalls.parquet as a chain of closed Parquet segments, joined by one footer when the trace ends."""
from __future__ import annotations

import copy
import functools
import io
import os
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import thriftpy2
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.utils import deserialize, serialize

from .backend import system

MAGIC = b"PAR1"
INDEX_SUFFIX = ".segments"  # beside the file, hidden: one entry per segment
ENTRY = struct.Struct("<QQ")  # where a segment ends, and the park file's read offset then

# A segment is a whole Parquet file (magic, row groups, footer, magic) appended to the one
# file. pyarrow writes every segment's offsets from 0 (it refuses to start a file elsewhere), so
# the footer that ends a finished trace is the segments' row groups with their offsets moved to
# where each segment starts. Footers are the format's FileMetaData in Thrift's compact protocol,
# read and written by thriftpy2 from the format's own definitions (data/parquet-format/); they
# decode and encode again byte for byte. While writing, pyarrow counts a segment's rows and row
# groups; the footers are decoded only to be joined. Measured on a 10M-row trace: 4 ms while
# writing and 83 ms sealing (9 ns a row); with --args (64 Ki-row groups) 22 + 362 ms (38 ns). A
# hand-written compact-protocol walker had taken 19 and 143 ms, all while writing.
THRIFT = Path(__file__).with_name("data") / "parquet-format" / "parquet.thrift"
_COMPACT = TCompactProtocolFactory(decode_response=False)  # strings stay bytes, as written
_CHUNK_OFFSETS = ("offset_index_offset", "column_index_offset")
_META_OFFSETS = ("data_page_offset", "index_page_offset", "dictionary_page_offset", "bloom_filter_offset")


class SegmentError(ValueError):
    """Bytes that are not a segment's footer (a torn write, a power cut's zeros)."""


@functools.cache
def parquet_thrift():
    """The Parquet format's Thrift structs (FileMetaData, RowGroup, ...), loaded once."""
    return thriftpy2.load(str(THRIFT), module_name="parquet_thrift")


def file_metadata(footer: bytes):
    """A footer's FileMetaData."""
    try:
        meta = deserialize(parquet_thrift().FileMetaData(), footer, _COMPACT)
    except Exception as exc:  # on bad bytes thriftpy2 raises what its reading hits (struct.error
        # past the end, KeyError for a type that does not exist, TypeError, OverflowError, ...)
        raise SegmentError(f"not a Parquet footer: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta.num_rows, int) or not meta.schema:
        raise SegmentError("not a Parquet footer: no schema or row count")
    return meta


def _move(group, base: int, ordinal: int):
    """A segment's row group placed base bytes into the file, as its ordinal-th."""
    if group.file_offset is not None:
        group.file_offset += base
    if group.ordinal is not None:  # an i16: past that the field is left out (it is optional)
        group.ordinal = ordinal if ordinal < 1 << 15 else None
    for chunk in group.columns or ():
        if chunk.file_offset:  # 0: no ColumnMetaData outside the footer (the field is deprecated)
            chunk.file_offset += base
        for name in _CHUNK_OFFSETS:
            if getattr(chunk, name) is not None:
                setattr(chunk, name, getattr(chunk, name) + base)
        meta = chunk.meta_data
        for name in _META_OFFSETS if meta is not None else ():
            if getattr(meta, name) is not None:
                setattr(meta, name, getattr(meta, name) + base)


def placed(footer: bytes, base: int, first_ordinal: int):
    """A segment's FileMetaData with its row groups placed base bytes into the file, numbered
    from first_ordinal."""
    meta = file_metadata(footer)
    meta.row_groups = meta.row_groups or []
    for i, group in enumerate(meta.row_groups):
        _move(group, base, first_ordinal + i)
    return meta


def encoded(meta) -> bytes:
    """A FileMetaData as a footer's bytes."""
    return serialize(meta, _COMPACT)


class _PlacedGroups:
    """Every segment's row groups, placed, as the list field thriftpy2 writes (it takes len()
    and iterates): decoded one segment at a time, so only the encoded footers stay in memory."""

    def __init__(self, parts: list[tuple[bytes, int]], count: int):
        self._parts, self._count = parts, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        ordinal = 0
        for footer, base in self._parts:
            groups = placed(footer, base, ordinal).row_groups
            ordinal += len(groups)
            yield from groups
        if ordinal != self._count:
            raise SegmentError(f"{ordinal} row groups, {self._count} counted")


class Footers:
    """The segments' footers, kept as written, and the one footer that joins them."""

    def __init__(self):
        self.template: bytes | None = None  # the first segment's: schema, key-value metadata
        self.parts: list[tuple[bytes, int]] = []  # (footer, where its segment starts) with rows
        self.groups = self.rows = 0

    def add(self, footer: bytes, base: int, groups: int, rows: int):
        if self.template is None:
            self.template = footer
        if groups:
            self.parts.append((footer, base))
        self.groups += groups
        self.rows += rows

    def copy(self) -> Footers:
        new = copy.copy(self)
        new.parts = list(self.parts)
        return new

    def joined(self) -> bytes:
        """The template with every segment's row groups and rows, framed as a file's end:
        footer, its length, magic."""
        meta = file_metadata(self.template)
        meta.row_groups, meta.num_rows = _PlacedGroups(self.parts, self.groups), self.rows
        out = encoded(meta)
        return out + struct.pack("<I", len(out)) + MAGIC


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
        flags = os.O_WRONLY | os.O_CREAT | system.OPEN_FLAGS | (0 if after else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o600)
        self._index = os.open(self.index_path, flags | os.O_APPEND, 0o600)
        if after is not None:
            os.ftruncate(self._fd, after.end)
            os.lseek(self._fd, after.end, os.SEEK_SET)
            os.ftruncate(self._index, after.index_used)
            self.end, self.footers = after.end, after.footers.copy()
            return
        self.end = 0
        self.footers = Footers()
        self.write(None, 0, 0)  # an empty first segment: the schema, readable from the start

    def write(self, table: pa.Table | None, row_group_size: int, cursor: int) -> int:
        """Writes a segment of table's rows in one write, then indexes it."""
        sink = pa.BufferOutputStream()
        w = pq.ParquetWriter(sink, self.schema, **self.options)
        if table is not None:
            w.write_table(table, row_group_size=row_group_size)
        w.close()
        data = sink.getvalue()
        md = pq.read_metadata(pa.BufferReader(data))  # pyarrow's own decoding: no Python per group
        self.footers.add(_footer_of(data), self.end, md.num_row_groups, md.num_rows)
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            done += os.write(self._fd, mv[done:])
        self.end += len(mv)
        self.mark(cursor)
        return self.end

    @property
    def rows(self) -> int:
        return self.footers.rows

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
        os.write(self._fd, self.footers.joined())
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
        self.footers = Footers()
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
                    meta = file_metadata(footer)
                except SegmentError:
                    break  # what follows was never completely written
                self.footers.add(footer, start, len(meta.row_groups or ()), meta.num_rows)
                self.ends.append(end)
                self.cursor = cursor
                self.index_used = off + ENTRY.size
                start = end

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def rows(self) -> int:
        return self.footers.rows

    def footer(self) -> bytes:
        if self.footers.template is None:
            raise SegmentError(f"{self.path}: no whole segment")
        return self.footers.joined()


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
