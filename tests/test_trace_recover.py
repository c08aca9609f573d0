"""A SIGKILLed `sensor trace` keeps its trace: read as it is, and after `sensor trace recover`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, wait_for
from parquet_readers import assert_duckdb_reads_as_pyarrow
from sensor.dataset import load_run

COUNTSTORM_C = Path(__file__).parent / "programs" / "countstorm.c"


def sensor(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def countstorm(tmp_path_factory):
    exe = tmp_path_factory.mktemp("countstorm") / "countstorm"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(COUNTSTORM_C)], check=True)
    return str(exe)


def _kill(pid: int | None):
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def killed_trace(out: Path, countstorm: str, *flags: str, seconds: float = 3.0) -> dict:
    """Traces a two-thread counting storm and SIGKILLs the tracer mid-storm, once the trace has
    checkpointed past `seconds`; the storm is killed too (it outlives its tracer). The storm
    rests 5 ms each 100 calls: a ring that overflowed would leave gaps of its own (counted)."""
    tracer = subprocess.Popen([sys.executable, "-m", "sensor", "trace", "-o", str(out), "--args",
                               "--no-progress", *flags, "--", countstorm, "2", "5000"],
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    storm = None
    try:
        line = tracer.stderr.readline()
        storm = int(re.search(r"pids (\d+)", line).group(1))

        def checkpointed():
            try:
                m = json.loads((out / "metadata.json").read_text())
            except (OSError, ValueError):
                return False
            return (m["end_ns"] - m["start_ns"]) / 1e9 >= seconds

        wait_for(checkpointed, timeout=60, what="the trace to checkpoint")
        tracer.kill()
        tracer.wait(10)
        assert tracer.returncode == -signal.SIGKILL
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait(10)
        tracer.stderr.close()
        _kill(storm)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "recording" and meta["lost"] == 0
    return meta


def counts_per_thread(table) -> dict[int, list[int]]:
    """Each thread's getppid counters (arg0), in row order; asserts timestamps never go back and
    no row repeats."""
    rows = table.select(["timestamp_ns", "tid", "syscall", "arg0"]).to_pylist()
    last: dict[int, int] = {}
    seen = set()
    out: dict[int, list[int]] = {}
    for r in rows:
        assert r["timestamp_ns"] >= last.get(r["tid"], 0), "a thread's timestamps went back"
        last[r["tid"]] = r["timestamp_ns"]
        if r["syscall"] == "getppid":
            key = (r["tid"], r["arg0"])
            assert key not in seen, f"duplicate row {key}"
            seen.add(key)
            out.setdefault(r["tid"], []).append(r["arg0"])
    return out


def assert_prefix(per_thread: dict[int, list[int]], at_least: int):
    """Every thread's calls from its first one, none missing: 0, 1, 2, ..."""
    assert len(per_thread) == 2, per_thread.keys()
    for tid, counters in per_thread.items():
        assert counters == list(range(len(counters))), f"tid {tid}: not a prefix of its calls"
        assert len(counters) >= at_least, (tid, len(counters))


@pytest.mark.parametrize("park", ["never", "always"])
def test_sigkill_mid_storm_keeps_a_prefix(tmp_path, countstorm, park):
    out = tmp_path / "t"
    meta = killed_trace(out, countstorm, "--park", park)
    # the last checkpoint counted what it had written: at least that much is read back
    checkpointed = meta["captured"]

    info = sensor("dataset", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    assert d["status"] == "cut short" and not d["sealed"]
    assert d["rows"] >= checkpointed
    direct = pq.read_table(load_run(out).parquet)
    assert direct.num_rows == d["rows"]
    before = counts_per_thread(direct)
    if park == "never":
        assert_prefix(before, at_least=1000)  # encoded as they came: all but the last second

    r = sensor("trace", "recover", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "processes.jsonl", "syscalls.parquet"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "cut short"
    table = pq.read_table(out / "syscalls.parquet")  # one Parquet file again, read without the sensor
    assert meta["captured"] == table.num_rows >= d["rows"]
    after = counts_per_thread(table)
    assert_prefix(after, at_least=1000)  # parked records too: encoded by recover
    for tid, counters in before.items():
        assert after[tid][:len(counters)] == counters
    if park == "always":
        assert meta["recovered"]["parked_rows"] > 0
    assert_duckdb_reads_as_pyarrow(out / "syscalls.parquet")
    assert all(line.endswith("}") for line in (out / "processes.jsonl").read_text().splitlines())

    # again: nothing changes
    digest = pq.ParquetFile(out / "syscalls.parquet").metadata.num_rows, (out / "syscalls.parquet").read_bytes()
    r = sensor("trace", "recover", str(out))
    assert r.returncode == 0 and "nothing to do" in r.stderr
    assert (pq.ParquetFile(out / "syscalls.parquet").metadata.num_rows,
            (out / "syscalls.parquet").read_bytes()) == digest
    info = json.loads(sensor("dataset", "info", str(out), "--json").stdout)
    assert info["rows"] == table.num_rows and info["sealed"] and info["status"] == "cut short"


def test_recover_refuses_a_live_trace_and_bad_dirs(tmp_path):
    r = sensor("trace", "recover", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no metadata.json" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.json").write_text("{")
    r = sensor("trace", "recover", str(tmp_path / "bad"))
    assert r.returncode == 2 and "invalid JSON" in r.stderr
