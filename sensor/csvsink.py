"""The original collectors' CSV layout as a sink: one CSV per collector under DATA_DIR/csv/, rows
buffered and written once a second, rotated by size or age into zstd files (`--sink store,csv`,
or `sensor export --format csv` from a store)."""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from .backend import system
from .schema import get, parse_time
from .store import compress

log = logging.getLogger("sensor.csvsink")

_CPU = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice",
        "interrupt", "dpc")
_MEM = ("total", "available", "percent", "used", "free", "active", "inactive", "buffers", "cached", "shared", "slab")
_SWAP = ("total", "used", "free", "percent", "sin", "sout")
_DISK = ("read_count", "write_count", "read_bytes", "write_bytes")
_NET = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout")


def _hw(e: dict) -> list:
    m = get(e, "host.metrics") or {}
    cpu, mem, swap = m.get("cpu", {}), m.get("memory", {}), m.get("swap", {})
    disks = (m.get("disk") or {}).get("io", {}).values()
    nics = (m.get("network") or {}).get("interfaces", {}).values()
    load = cpu.get("load", {})
    return ([cpu.get("usage"), *(cpu.get(k) for k in _CPU), cpu.get("frequency_mhz"),
             load.get("1m"), load.get("5m"), load.get("15m")]
            + [mem.get(k) for k in _MEM] + [swap.get(k) for k in _SWAP]
            + [sum(d.get(k, 0) for d in disks) for k in _DISK] + [sum(n.get(k, 0) for n in nics) for k in _NET])


def _port(e: dict, side: str):
    p = get(e, f"{side}.port")
    return "N/A" if p is None else p


def _isdir(e: dict) -> bool:
    return get(e, "file.type") == "dir"


def _path_src_dst(e: dict) -> tuple:
    original = get(e, "file.original.path")
    return (original, get(e, "file.path")) if original is not None else (get(e, "file.path"), "")


# collector -> (which events, header after date and time, the row's values after date and time)
COLLECTORS = {
    "hw_resources": (
        lambda e: e["event"].get("dataset") == "host.metrics",
        ["cpu_usage", *(f"cpu_{k}" for k in _CPU), "cpu_freq_mhz", "load_1m", "load_5m", "load_15m",
         *(f"mem_{k}" for k in _MEM), *(f"swap_{k}" for k in _SWAP), *(f"disk_{k}" for k in _DISK),
         *(f"net_{k}" for k in _NET)],
        _hw),
    "processes": (
        lambda e: e["event"].get("dataset") in ("process", "host.processes"),
        ["event", "pid", "ppid", "name", "executable", "user", "command_line", "create_time", "entity_id"],
        lambda e: [e["event"].get("action"), get(e, "process.pid"), get(e, "process.parent.pid"),
                   get(e, "process.name"), get(e, "process.executable"), get(e, "user.name"),
                   get(e, "process.command_line"), get(e, "process.start"), get(e, "process.entity_id")]),
    "services": (
        lambda e: e["event"].get("dataset") == "host.services",
        ["event", "name", "state", "start_mode", "pid", "executable", "user", "description"],
        lambda e: [e["event"].get("action"), get(e, "service.name"), get(e, "service.state"),
                   get(e, "service.start_mode"), get(e, "process.pid"), get(e, "process.executable"),
                   get(e, "user.name"), get(e, "service.description")]),
    "network_packets": (
        lambda e: e["event"].get("dataset") == "network.packets",
        ["ip src", "ip dst", "port src", "port dst", "transport protocol", "application protocol", "length"],
        lambda e: [get(e, "source.ip"), get(e, "destination.ip"), _port(e, "source"), _port(e, "destination"),
                   get(e, "network.transport"), get(e, "network.protocol") or "N/A", get(e, "network.bytes")]),
    "directories": (
        lambda e: e["event"].get("dataset") == "file",
        ["event", "path src", "path dst", "file name", "isDirectory"],
        lambda e: [e["event"].get("action"), *_path_src_dst(e), get(e, "file.name"), _isdir(e)]),
}


class _File:
    def __init__(self, directory: Path, name: str, header: list[str]):
        self.path = directory / f"{name}.csv"
        self.header = ["date", "time", *header]
        self.rows: list[list] = []
        self.opened = 0.0
        self.size = self.path.stat().st_size if self.path.exists() else 0


class CsvSink:
    """`write` takes every event; rows wait in memory until `tick` (each pipeline loop) sees the
    flush interval pass, so a storm costs one write per file per interval, not one per row."""

    def __init__(self, directory, *, segment_bytes: int = 16 << 20, segment_seconds: float = 3600.0,
                 flush_interval: float = 1.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.segment_bytes, self.segment_seconds, self.flush_interval = segment_bytes, segment_seconds, flush_interval
        self.files = {name: _File(self.dir, name, header) for name, (_, header, _) in COLLECTORS.items()}
        self.written = self.errors = 0
        self._last_flush = time.monotonic()

    def write(self, event: dict):
        for name, (wanted, _, row) in COLLECTORS.items():
            if wanted(event):
                ts = event.get("@timestamp")
                when = datetime.fromtimestamp(parse_time(ts) / 1e9, timezone.utc) if ts else None
                date, clock = (when.strftime("%Y-%m-%d"), when.strftime("%H:%M:%S.%f")) if when else ("", "")
                self.files[name].rows.append([date, clock, *row(event)])
                return

    def tick(self):
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self):
        self._last_flush = time.monotonic()
        for f in self.files.values():
            if f.rows:
                self._append(f)

    def _append(self, f: _File):
        buf = io.StringIO()
        w = csv.writer(buf)
        if f.size == 0:
            w.writerow(f.header)
        w.writerows(["" if v is None else v for v in row] for row in f.rows)
        data = buf.getvalue().encode("utf-8", "surrogateescape")
        try:
            fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | system.OPEN_FLAGS, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:  # kept for the next flush: nothing already captured is dropped here
            self.errors += 1
            log.warning("csv %s: %s (rows kept for the next flush)", f.path, exc.strerror)
            return
        self.written += len(f.rows)
        f.rows.clear()
        if f.size == 0:
            f.opened = time.time()
        f.size += len(data)
        if f.size >= self.segment_bytes or time.time() - f.opened >= self.segment_seconds:
            self.rotate(f)

    def rotate(self, f: _File):
        """NAME.csv -> NAME-<UTC time>.csv.zst; the next rows start a new NAME.csv with its header."""
        if f.size == 0:
            return
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        closed = f.path.with_name(f"{f.path.stem}-{stamp}.csv")
        try:
            os.rename(f.path, closed)
            compress(closed)
        except OSError as exc:
            log.warning("csv rotation of %s: %s", f.path, exc.strerror)
        f.size = 0

    def close(self):
        self.flush()
