"""A trace directory: syscalls.parquet written in closed segments, processes.jsonl, metadata.json."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from . import syscall_flags, syscalls, wire
from .schema import text
from .segments import SegmentWriter

# Rows per Parquet row group: large for good compression, bounded for memory (an --args record
# is 736 bytes in the kernel's layout, a plain one 40).
ROW_GROUP, ROW_GROUP_ARGS = 1 << 18, 1 << 16
# What waits in memory is written as a closed segment at least this often, with processes.jsonl
# and metadata.json: a killed trace keeps what came before (docs/trace.md, Output).
CHECKPOINT_SECONDS = 1.0

# Timestamps and durations are near-unique: dictionary pages for them are built only to be
# thrown away. Delta-encoded instead (timestamps rise), and with statistics kept only where
# readers filter, writing costs about 40 % less CPU per row and the file is less than half the
# size (measured on a 4M-call getppid trace: 126 -> 70 ns a row, 13.7 -> 5.7 MB).
PARQUET_OPTIONS = dict(
    compression="zstd",
    use_dictionary=["pid", "tid", "ppid", "comm", "syscall_nr", "syscall", "ret", "path", "path2", "addr"],
    column_encoding={"timestamp_ns": "DELTA_BINARY_PACKED", "duration_ns": "DELTA_BINARY_PACKED"},
    write_statistics=["timestamp_ns", "pid", "tid", "syscall_nr"])

BASE = [("timestamp_ns", pa.int64()), ("duration_ns", pa.int64()), ("pid", pa.int32()),
        ("tid", pa.int32()), ("ppid", pa.int32()), ("comm", pa.dictionary(pa.int32(), pa.string())),
        ("syscall_nr", pa.int32()), ("syscall", pa.dictionary(pa.int32(), pa.string())),
        ("ret", pa.int64())]
ARGS = [(f"arg{i}", pa.uint64()) for i in range(6)] + [
    ("path", pa.string()), ("path2", pa.string()), ("addr", pa.string()),
    ("fd", pa.int64()), ("flags", pa.string()), ("truncated", pa.bool_()), ("escaped", pa.bool_())]

# Syscalls whose first argument is a file descriptor (a dirfd for the *at calls): the `fd` column.
FD_FIRST = (set(syscalls.GROUPS["desc"]) - {"pipe", "pipe2", "epoll_create1", "eventfd2"}) | (
    set(syscalls.GROUPS["network"]) - {"socket", "socketpair"}) | {
    "openat", "openat2", "newfstatat", "statx", "unlinkat", "mkdirat", "fchmodat", "fchownat",
    "faccessat", "faccessat2", "readlinkat", "execveat", "renameat", "renameat2", "linkat",
    "mknodat", "utimensat"}


def sockaddr(raw: bytes) -> str | None:
    """A struct sockaddr as text: 1.2.3.4:80, [::1]:80, a unix path (@ for abstract)."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return f"{ipaddress.IPv4Address(raw[4:8])}:{struct.unpack_from('!H', raw, 2)[0]}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        return f"[{ipaddress.IPv6Address(raw[8:24])}]:{struct.unpack_from('!H', raw, 2)[0]}"
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return "@" + text(path[1:].rstrip(b"\0"))[0]
        return text(path.split(b"\0", 1)[0])[0]
    return f"family={family}"


class Comms:
    """pid -> its command name over time (exec changes it) and its parent, for the columns."""

    def __init__(self):
        self.names: dict[int, tuple[list[int], list[str]]] = {}
        self.ppids: dict[int, int] = {}

    def set(self, pid: int, since_ns: int, comm: str, ppid: int | None = None):
        times, names = self.names.setdefault(pid, ([], []))
        times.append(since_ns)
        names.append(comm)
        if ppid is not None:
            self.ppids[pid] = ppid

    def known(self, pid: int) -> bool:
        return pid in self.names

    def columns(self, pids: np.ndarray, ts: np.ndarray) -> tuple[pa.DictionaryArray, np.ndarray]:
        """comm (dictionary-encoded, no per-row Python objects) and ppid for a batch of rows."""
        names: list[str] = []
        index = {}
        comm = np.zeros(len(pids), dtype=np.int32)
        ppid = np.zeros(len(pids), dtype=np.int32)
        order = np.argsort(pids, kind="stable")
        uniq, starts = np.unique(pids[order], return_index=True)
        for pid, lo, hi in zip(uniq, starts, list(starts[1:]) + [len(pids)]):
            rows = order[lo:hi]
            times, pnames = self.names.get(int(pid), ([0], [""]))
            which = np.searchsorted(np.asarray(times), ts[rows], side="right") - 1
            codes = np.asarray([index.setdefault(n, len(index)) for n in pnames], dtype=np.int32)
            comm[rows] = codes[np.maximum(which, 0)]
            ppid[rows] = self.ppids.get(int(pid), 0)
        names = sorted(index, key=index.get)
        return pa.DictionaryArray.from_arrays(pa.array(comm), pa.array(names, pa.string())), ppid


def _punch_hole(fd: int, offset: int, length: int):
    """Frees a file's blocks in place, where the filesystem can (ext4, xfs, btrfs, tmpfs)."""
    global _fallocate
    if _fallocate is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _fallocate = libc.fallocate
        _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)  # failure: space freed at the end


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
PARK_RESERVE = 64 << 20
PARK_KEEP_FREE = 1 << 30  # or 5 % of a smaller filesystem
_fallocate = None


class Spill:
    """Raw records parked on disk, in order, while the traced workload keeps the cores busy.

    Encoding Parquet costs about 130 ns of CPU a record; parking one costs a copy. Under a storm
    that CPU is better left to the traced processes (measured: two getppid storms on 2 cores were
    captured at 2.6M calls/s encoding as they came, 3.1M/s when encoding waited), so records go
    here and are encoded once the ring is quiet, or at the end. The file is emptied whenever
    encoding catches up, and removed when the trace is written.

    Records taken from here stay on disk until the segment holding them is written (`commit`),
    so that a killed trace can encode the rest: syscalls.parquet's index keeps the read offset."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = Path(path), dtype
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._read = self._written = self._allocated = self._committed = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return (self._written - self._read) // self.dtype.itemsize

    def put(self, records: np.ndarray):
        """Appends; raises OSError (a full disk), with what was half-written dropped."""
        data = memoryview(np.ascontiguousarray(records)).cast("B")
        done = 0
        try:
            if self._written + len(data) > self._allocated:
                self._reserve(len(data))
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self._written + done)
        except OSError:
            os.ftruncate(self._fd, self._written)
            self._allocated = self._written
            raise
        self._written += done
        self.peak_bytes = max(self.peak_bytes, self._written - self._read)

    def _reserve(self, need: int):
        """Reserves blocks ahead, not page by page as the writes come (measured: a third less
        system time parking on ext4), and never the disk's last room: the host needs it more
        than we do (an ENOSPC then, and the records are encoded instead)."""
        st = os.fstatvfs(self._fd)
        keep = min(PARK_KEEP_FREE, st.f_blocks * st.f_frsize // 20)
        spare = st.f_bavail * st.f_frsize - keep
        if need > spare:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {keep:,} bytes are kept free")
        size = min(need + PARK_RESERVE, spare)
        os.posix_fallocate(self._fd, self._written, size)
        self._allocated = self._written + size

    @property
    def read_offset(self) -> int:
        return self._read

    def take(self, max_records: int) -> np.ndarray:
        size = min(len(self), max_records) * self.dtype.itemsize
        data = os.pread(self._fd, size, self._read)
        self._read += len(data)
        return np.frombuffer(data, self.dtype)

    def commit(self) -> bool:
        """What was taken is written: its disk space back (a full disk); True if the file was
        emptied (caught up), so offsets start again from 0."""
        if self._read == self._written and self._written:
            os.ftruncate(self._fd, 0)
            self._read = self._written = self._allocated = self._committed = 0
            return True
        if self._read > self._committed:
            _punch_hole(self._fd, self._committed, self._read - self._committed)
            self._committed = self._read
        return False

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)


class Encoder:
    """Kernel records to Arrow tables in the syscalls.parquet schema."""

    def __init__(self, with_args: bool, boot_offset_ns: int):
        # one encoding thread: the traced workload needs the other cores more than we do
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        self.with_args = with_args
        self.boot_offset_ns = boot_offset_ns
        self.schema = pa.schema(BASE + (ARGS if with_args else []))
        self.names = pa.array(syscalls.names_array() + ["unknown"])
        self.row_group = ROW_GROUP_ARGS if with_args else ROW_GROUP
        self.dtype = wire.syscall_args_event if with_args else wire.syscall_event

    def _table(self, r: np.ndarray, comms: Comms) -> pa.Table:
        ts = r["enter_ns"].astype(np.int64)
        comm, ppid = comms.columns(r["pid"], ts)
        nr = r["nr"].astype(np.int32)
        idx = np.where(nr < wire.SYSCALL_NR_MAX, nr, wire.SYSCALL_NR_MAX).astype(np.int32)
        cols = [ts + self.boot_offset_ns, r["duration_ns"].astype(np.int64), r["pid"].astype(np.int32),
                r["tid"].astype(np.int32), ppid, comm, nr,
                pa.DictionaryArray.from_arrays(pa.array(idx), self.names), r["ret"]]
        if self.with_args:
            cols += [r["args"][:, i] for i in range(6)] + self._decoded(r)
        return pa.Table.from_arrays([pa.array(c) if isinstance(c, np.ndarray) else c for c in cols],
                                    schema=self.schema)

    def _decoded(self, r: np.ndarray) -> list:
        n = len(r)
        path, path2, addr = [None] * n, [None] * n, [None] * n
        escaped = np.zeros(n, dtype=bool)
        fd = [None] * n
        names = syscalls.table()
        for i in np.flatnonzero((r["path_len"] > 0) | (r["path2_len"] > 0) | (r["addr_len"] > 0)):
            rec = r[i]
            for col, field, length in ((path, "path", "path_len"), (path2, "path2", "path2_len")):
                if rec[length]:
                    # fixed slots are reused: only the first len bytes (NUL included) are this call's
                    col[i], esc = text(rec[field][:rec[length]].split(b"\0", 1)[0])
                    escaped[i] |= esc
            if rec["addr_len"]:
                addr[i] = sockaddr(bytes(rec["addr"])[:rec["addr_len"]])
        for i in np.flatnonzero(np.isin(r["nr"], [nr for nr, s in names.items() if s in FD_FIRST])):
            fd[i] = int(np.int32(np.uint32(r["args"][i, 0] & 0xFFFFFFFF)))
        truncated = (r["flags"] & (wire.SC_PATH_TRUNCATED | wire.SC_PATH2_TRUNCATED)) != 0
        return [pa.array(path, pa.string()), pa.array(path2, pa.string()), pa.array(addr, pa.string()),
                pa.array(fd, pa.int64()), pa.array(self._flags(r, names), pa.string()), truncated, escaped]

    @staticmethod
    def _flags(r: np.ndarray, names: dict[int, str]) -> list:
        """The `flags` column: each distinct flag value of a syscall is decoded once."""
        out = [None] * len(r)
        for nr in np.unique(r["nr"]):
            name = names.get(int(nr))
            if name not in syscall_flags.DECODERS:
                continue
            rows = np.flatnonzero(r["nr"] == nr)
            values = r["args"][rows][:, list(syscall_flags.DECODERS[name][0])] & 0xFFFFFFFF
            distinct, which = np.unique(values, axis=0, return_inverse=True)
            texts = [syscall_flags.decode(name, v) for v in distinct]
            for i, k in zip(rows, which.ravel()):
                out[i] = texts[k]
        return out

class TraceWriter(Encoder):
    """Writes a trace directory as records come: segments of syscalls.parquet, processes.jsonl,
    metadata.json."""

    def __init__(self, out: Path, with_args: bool, boot_offset_ns: int):
        super().__init__(with_args, boot_offset_ns)
        self.out = Path(out)
        self.out.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self.spill: Spill | None = None  # the session's park file, whose read offset is indexed
        self._pq = SegmentWriter(self.out / "syscalls.parquet", self.schema, PARQUET_OPTIONS)
        self._proc = self._create("processes.jsonl")

    def _create(self, name: str):
        fd = os.open(self.out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb")

    def add(self, records: np.ndarray, comms: Comms, force: bool = False):
        """Buffers a batch of syscall records; writes a row group once enough have come."""
        if len(records):
            self._pending.append(records)
            self._pending_rows += len(records)
        if self._pending_rows >= self.row_group or (force and self._pending_rows):
            batch = np.concatenate(self._pending)
            self._pending, self._pending_rows = [], 0
            spill = self.spill
            self._pq.write(self._table(batch, comms), self.row_group, spill.read_offset if spill else 0)
            self.rows += len(batch)
            if spill is not None and spill.commit():
                self._pq.mark(0)  # the park file was emptied: its offsets start again

    def process_event(self, event: dict):
        self._proc.write(orjson.dumps(event) + b"\n")

    def flush(self, comms: Comms):
        self.add(np.empty(0, self.dtype), comms, force=True)

    def checkpoint(self, metadata: dict, sync: bool = True):
        """What is written so far survives a kill, and (sync) a power cut."""
        self._proc.flush()
        if sync:
            self._pq.sync()
        write_metadata(self.out, metadata, sync=False)

    def close(self, metadata: dict):
        self._pq.seal()
        self._proc.close()
        write_metadata(self.out, metadata)
        self._pq.index_path.unlink()  # last: until metadata.json says complete, recover can redo the end


def write_metadata(out: Path, metadata: dict, sync: bool = True):
    """metadata.json replaced whole (a reader never sees half of it)."""
    tmp = Path(out) / ".metadata.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps(metadata, option=orjson.OPT_INDENT_2) + b"\n")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, Path(out) / "metadata.json")
