"""The original per-collector CSV layout: real sensor output, rotation, hostile values."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import psutil
import zstandard

from sensor.csvsink import CsvSink

from conftest import ROOT, wait_for


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_sensor_writes_one_csv_per_collector(start_sensor, tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    s = start_sensor("--sink", "store,csv", "--files-paths", str(watched), "--metrics-interval", "0.5",
                     "--no-network-enabled", "--no-security-enabled")
    (watched / "a.txt").write_text("x")
    os.rename(watched / "a.txt", watched / "b.txt")
    (watched / "dir").mkdir()
    csvdir = s.data_dir / "csv"
    wait_for(lambda: (csvdir / "directories.csv").exists() and (csvdir / "hw_resources.csv").exists()
             and len(rows(csvdir / "hw_resources.csv")) > 3, timeout=20, what="CSV rows")
    assert s.stop() == 0
    hw = rows(csvdir / "hw_resources.csv")
    assert hw[0][:3] == ["date", "time", "cpu_usage"] and "mem_total" in hw[0] and "net_bytes_recv" in hw[0]
    sample = dict(zip(hw[0], hw[-1]))
    assert int(sample["mem_total"]) == psutil.virtual_memory().total
    assert 0 <= float(sample["cpu_usage"]) <= 1
    assert int(sample["net_bytes_recv"]) <= sum(n.bytes_recv for n in psutil.net_io_counters(pernic=True).values())
    d = rows(csvdir / "directories.csv")
    assert d[0] == ["date", "time", "event", "path src", "path dst", "file name", "isDirectory"]
    body = [r[2:] for r in d[1:]]
    assert ["create", f"{watched}/a.txt", "", "a.txt", "False"] in body
    assert ["rename", f"{watched}/a.txt", f"{watched}/b.txt", "b.txt", "False"] in body
    assert ["mkdir", f"{watched}/dir", "", "dir", "True"] in body
    procs = rows(csvdir / "processes.csv")
    assert procs[0][:4] == ["date", "time", "event", "pid"] and len(procs) > 10  # the inventory snapshot at least
    for name in ("hw_resources", "processes", "directories"):
        assert oct(os.stat(csvdir / f"{name}.csv").st_mode & 0o777) == "0o600"


def test_rotation_compresses_and_every_file_has_its_header(tmp_path):
    sink = CsvSink(tmp_path, segment_bytes=2000, flush_interval=0)
    hostile = 'comma, "quote"\nnewline'
    for i in range(100):
        sink.write({"@timestamp": "2026-11-25T01:02:03.000000004Z",
                    "event": {"dataset": "file", "action": "create"},
                    "file": {"path": f"/x/{hostile}{i}", "name": f"{hostile}{i}", "type": "file"}})
        sink.tick()
    sink.close()
    rotated = sorted(tmp_path.glob("directories-*.csv.zst"))
    assert len(rotated) >= 3
    got = []
    for z in rotated:
        assert z.stat().st_mode & 0o777 == 0o600
        text = zstandard.ZstdDecompressor().decompressobj().decompress(z.read_bytes()).decode()
        part = list(csv.reader(io.StringIO(text)))
        assert part[0] == ["date", "time", "event", "path src", "path dst", "file name", "isDirectory"]
        got += part[1:]
    current = rows(tmp_path / "directories.csv") if (tmp_path / "directories.csv").exists() else [[]]
    got += current[1:]
    assert [r[5] for r in got] == [f"{hostile}{i}" for i in range(100)]  # in order, none lost, round-tripped
    assert got[0][:2] == ["2026-11-25", "01:02:03.000000"]


def test_export_turns_a_store_into_the_csv_layout(start_sensor, tmp_path):
    s = start_sensor("--no-network-enabled", "--no-security-enabled", "--no-files-enabled")
    wait_for(lambda: s.events(event__dataset="host.metrics"), what="a metrics sample")
    assert s.stop() == 0
    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "sensor", "export", "--data-dir", str(s.data_dir), "--format", "csv",
                        "-o", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert len(rows(out / "hw_resources.csv")) - 1 == len(s.events(event__dataset="host.metrics"))
    assert len(rows(out / "processes.csv")) - 1 == len(s.events(event__dataset="process")) + len(
        s.events(event__dataset="host.processes"))
