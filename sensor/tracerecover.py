"""Traces cut short (a killed `sensor trace`): their state, and `sensor trace recover`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from .errors import SensorError
from .schema import parse_time
from .segments import SegmentError, Segments, SegmentWriter, index_path
from .tracefile import PARQUET_OPTIONS, Comms, Encoder, write_metadata

RECORDING, COMPLETE, CUT_SHORT = "recording", "complete", "cut short"
PAGE = 4096


class RecoverError(SensorError):
    """A trace directory cannot be recovered; the message says why."""


def read_metadata(trace_dir: Path) -> dict:
    path = Path(trace_dir) / "metadata.json"
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RecoverError(f"{trace_dir}: no metadata.json: not a trace directory written by `sensor trace`") from None
    except orjson.JSONDecodeError as exc:
        raise RecoverError(f"{path}: invalid JSON: {exc}") from None


def _recorder_alive(meta: dict) -> bool:
    pid = meta.get("recorder_pid")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"trace" in f.read()
    except (OSError, TypeError):
        return False


def state(meta: dict) -> str:
    """complete, recording (its `sensor trace` still runs) or cut short (it was killed)."""
    status = meta.get("status", COMPLETE)  # traces from before the field were written whole
    if status == RECORDING and not _recorder_alive(meta):
        return CUT_SHORT
    return status


def sealed(meta: dict) -> bool:
    """syscalls.parquet is one Parquet file: the trace ended, or was recovered."""
    return meta.get("status", COMPLETE) != RECORDING


def _parked(trace_dir: Path, cursor: int, dtype: np.dtype) -> np.ndarray:
    """The records still parked after cursor: up to the first slot never written (zeros: the
    space parking reserved ahead), less a last record torn at a page boundary by the kill."""
    try:
        with open(trace_dir / ".syscalls.spill", "rb") as f:
            f.seek(cursor)
            raw = f.read()
    except FileNotFoundError:
        return np.empty(0, dtype)
    recs = np.frombuffer(raw[:len(raw) - len(raw) % dtype.itemsize], dtype)
    unwritten = np.flatnonzero((recs["enter_ns"] == 0) | (recs["pid"] == 0))
    recs = recs[:unwritten[0]] if len(unwritten) else recs
    if len(recs):
        start = cursor + (len(recs) - 1) * dtype.itemsize
        boundary = (start // PAGE + 1) * PAGE
        if boundary < start + dtype.itemsize:  # the last record spans pages: all of it written?
            tail = raw[boundary - cursor:start + dtype.itemsize - cursor]
            if not any(tail):
                recs = recs[:-1]
    return recs


def _comms(trace_dir: Path, meta: dict) -> Comms:
    """Command names over time, as the tracer knew them, from processes.jsonl."""
    comms = Comms()
    offset = meta.get("boot_offset_ns") or 0
    command = meta.get("command")
    for pid in meta.get("pids") or []:
        comms.set(pid, 0, os.path.basename(command[0])[:15] if command else "")
    path = trace_dir / "processes.jsonl"
    if not path.exists():
        return comms
    for line in path.read_bytes().splitlines():
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line the kill cut
        p, action = e.get("process", {}), e.get("event", {}).get("action")
        ts = parse_time(e["@timestamp"]) - offset
        ppid = (p.get("parent") or {}).get("pid")
        if action == "exec":
            comms.set(p["pid"], ts, (p.get("name") or "")[:15], ppid)
        elif action == "fork" and ppid is not None:
            parent = comms.names.get(ppid)
            comms.set(p["pid"], ts, parent[1][-1] if parent else (p.get("name") or ""), ppid)
    return comms


def _cut_torn_line(path: Path):
    """processes.jsonl ends with its last whole line."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def recover(trace_dir) -> dict:
    """Makes a killed trace whole: syscalls.parquet ends after its last whole segment, what was
    parked is encoded after it, and metadata.json says `cut short`. Run again, it finds the
    same segments and writes the same file; on a whole trace it changes nothing."""
    trace_dir = Path(trace_dir)
    meta = read_metadata(trace_dir)
    st = state(meta)
    if st == RECORDING:
        raise RecoverError(f"{trace_dir}: still being recorded by `sensor trace` (pid {meta.get('recorder_pid')})",
                           hint="stop it with Ctrl-C or SIGTERM; it ends the trace itself")
    parquet = trace_dir / "syscalls.parquet"
    if sealed(meta):  # ended, or already recovered
        _remove_leftovers(trace_dir)
        return {"path": str(trace_dir), "status": st, "recovered": False}
    try:
        segs = Segments(parquet)
    except FileNotFoundError:
        raise RecoverError(f"{trace_dir}: no syscalls.parquet") from None
    if segs.footers.template is None:
        raise RecoverError(f"{parquet}: no whole segment to recover (not written by this sensor version?)")
    enc = Encoder(bool(meta.get("options", {}).get("args")), meta.get("boot_offset_ns") or 0)
    parked = _parked(trace_dir, segs.cursor, enc.dtype)
    writer = SegmentWriter(parquet, enc.schema, PARQUET_OPTIONS, after=segs)
    if len(parked):
        comms = _comms(trace_dir, meta)
        for pid in np.unique(parked["pid"]):
            if not comms.known(int(pid)):
                comms.set(int(pid), 0, "")
        for i in range(0, len(parked), enc.row_group):
            part = parked[i:i + enc.row_group]
            writer.write(enc._table(part, comms), enc.row_group, segs.cursor + (i + len(part)) * enc.dtype.itemsize)
    writer.seal()
    _cut_torn_line(trace_dir / "processes.jsonl")
    rows_before = segs.rows
    meta.update(status=CUT_SHORT, captured=writer.rows,
                recovered={"rows": rows_before, "parked_rows": len(parked)})
    write_metadata(trace_dir, meta)
    _remove_leftovers(trace_dir)
    return {"path": str(trace_dir), "status": CUT_SHORT, "recovered": True, "rows": writer.rows,
            "parked_rows": len(parked)}


def _remove_leftovers(trace_dir: Path):
    for p in (index_path(trace_dir / "syscalls.parquet"), trace_dir / ".syscalls.spill",
              trace_dir / ".metadata.json.tmp"):
        p.unlink(missing_ok=True)


def open_unsealed(trace_dir: Path):
    """syscalls.parquet of a trace not ended (cut short, or still recording) as a readable file:
    its whole segments and their joined footer, written nowhere (what is parked is not in it)."""
    from .segments import JoinedView

    try:
        return JoinedView(Segments(Path(trace_dir) / "syscalls.parquet"))
    except SegmentError as exc:
        raise RecoverError(f"{trace_dir}/syscalls.parquet: unreadable: {exc}") from None
