"""`sensor trace` on real processes: exact syscalls, order, decoding, forks, loss, exit status."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sensor import syscalls
from conftest import ROOT, wait_for
from parquet_readers import assert_duckdb_reads_as_pyarrow

KNOWN = str(Path(__file__).parent / "programs" / "known.py")
STORM_C = ROOT / "bench" / "getppid.c"


def trace(out: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", "trace", "-o", str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


def load(out: Path) -> tuple[list[dict], dict]:
    rows = pq.read_table(out / "syscalls.parquet").to_pylist()
    return rows, json.loads((out / "metadata.json").read_text())


def per_tid_ordered(rows) -> bool:
    last: dict[int, int] = {}
    for r in rows:
        if r["timestamp_ns"] < last.get(r["tid"], 0):
            return False
        last[r["tid"]] = r["timestamp_ns"]
    return True


def check_known(rows, meta, pid: int, port: int, n: int):
    """The known program's calls are there, exactly and in order, with decoded arguments."""
    mine = [r for r in rows if r["pid"] == pid and r["tid"] == pid]
    getppid = [r for r in mine if r["syscall"] == "getppid"]
    if meta["lost"] == 0:
        assert len(getppid) == n
    else:  # this kernel's ring buffer can refuse a reserve: then it must be counted
        assert len(getppid) <= n <= len(getppid) + meta["lost"]
    assert all(r["ret"] == os.getpid() or r["ret"] > 0 for r in getppid)
    key = [(r["syscall"], r["path"] or r["addr"]) for r in mine
           if r["syscall"] in ("bind", "listen", "getppid", "connect")
           or (r["syscall"] == "openat" and r["path"] == "/etc/hostname")]
    first_getppid = key.index(("getppid", None))
    assert key[:first_getppid] == [("bind", "127.0.0.1:0"), ("listen", None)]
    assert key[-2:] == [("openat", "/etc/hostname"), ("connect", f"127.0.0.1:{port}")]
    (opened,) = [r for r in mine if r["syscall"] == "openat" and r["path"] == "/etc/hostname"]
    assert opened["ret"] >= 0 and opened["fd"] == -100  # AT_FDCWD
    assert opened["flags"] == "O_RDONLY|O_CLOEXEC"  # Python opens close-on-exec
    sockets = [r for r in mine if r["syscall"] == "socket"]
    assert sockets and all(r["flags"] == "AF_INET|SOCK_STREAM|SOCK_CLOEXEC" for r in sockets)
    closes = [r for r in mine if r["syscall"] == "close" and r["fd"] == opened["ret"]
              and r["timestamp_ns"] > opened["timestamp_ns"]]
    assert closes and closes[0]["ret"] == 0
    (conn,) = [r for r in mine if r["syscall"] == "connect"]
    assert conn["ret"] == 0 and conn["duration_ns"] >= 0
    assert per_tid_ordered(rows)
    assert {r["comm"] for r in mine} <= {"python3", "python", os.path.basename(sys.executable)[:15]}


def test_command_known_sequence(tmp_path):
    out = tmp_path / "t"
    r = trace(out, "--args", "--label", "normal", "--", sys.executable, KNOWN, "500", "/etc/hostname")
    assert r.returncode == 0, r.stderr
    pid, port = map(int, r.stdout.split())
    rows, meta = load(out)
    # the trace starts at the command's own execve: no launcher calls before it
    first = rows[0]
    assert (first["pid"], first["syscall"], first["path"], first["ret"]) == (pid, "execve", sys.executable, 0)
    check_known(rows, meta, pid, port, 500)
    assert meta["captured"] == len(rows) and meta["label"] == "normal"
    assert meta["command"] == [sys.executable, KNOWN, "500", "/etc/hostname"]
    assert meta["exit_code"] == 0 and meta["pids"] == [pid]
    assert meta["syscall_table"] == "x86_64" and meta["options"]["args"] is True
    assert f"{meta['captured']:,} syscalls captured" in r.stderr
    procs = [json.loads(line) for line in (out / "processes.jsonl").read_text().splitlines()]
    assert any(e["event"]["action"] == "exec" and e["process"]["pid"] == pid for e in procs)
    assert any(e["event"]["action"] == "exit" and e["process"]["pid"] == pid for e in procs)
    for f in ("syscalls.parquet", "metadata.json", "processes.jsonl"):
        assert (out / f).stat().st_mode & 0o777 == 0o600


def test_attach_by_pid(tmp_path):
    out = tmp_path / "t"
    prog = subprocess.Popen([sys.executable, KNOWN, "300", "/etc/hostname", "--wait"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tracer = subprocess.Popen([sys.executable, "-m", "sensor", "trace", "-o", str(out), "--args",
                               "--pid", str(prog.pid)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert "tracing pids" in tracer.stderr.readline()
        prog.stdin.write("go\n")
        prog.stdin.flush()
        pid, port = map(int, prog.stdout.readline().split())
        assert prog.wait(30) == 0
        assert tracer.wait(30) == 0  # ends by itself once the traced process is gone
    finally:
        for p in (prog, tracer):
            if p.poll() is None:
                p.kill()
                p.wait()
    rows, meta = load(out)
    assert pid == prog.pid and {r["pid"] for r in rows} == {pid}
    check_known(rows, meta, pid, port, 300)
    assert meta["command"] is None and meta["pids"] == [pid] and meta["exit_code"] is None


def test_follow_forks_and_threads(tmp_path):
    out = tmp_path / "t"
    r = trace(out, "--", sys.executable, KNOWN, "200", "/etc/hostname", "--depth", "3", "--threads", "2")
    assert r.returncode == 0, r.stderr
    pids = [int(line.split()[0]) for line in r.stdout.splitlines()]
    assert len(set(pids)) == 3
    rows, meta = load(out)
    for pid in pids:
        mine = [x for x in rows if x["pid"] == pid]
        assert len({x["tid"] for x in mine}) >= 3, "main thread and two workers"
        n = sum(x["syscall"] == "getppid" for x in mine)
        assert n == 600 or (n < 600 <= n + meta["lost"])
    procs = [json.loads(line) for line in (out / "processes.jsonl").read_text().splitlines()]
    forks = {e["process"]["pid"]: e["process"]["parent"]["pid"] for e in procs if e["event"]["action"] == "fork"}
    root = rows[0]["pid"]
    chain = [p for p in pids if p != root]
    assert all(forks.get(c) in pids for c in chain)
    assert per_tid_ordered(rows)

    out2 = tmp_path / "root-only"
    r = trace(out2, "--no-follow-forks", "--", sys.executable, KNOWN, "50", "/etc/hostname", "--depth", "3")
    assert r.returncode == 0, r.stderr
    rows2, _ = load(out2)
    assert {x["pid"] for x in rows2} == {rows2[0]["pid"]}


def test_syscall_filter_and_exit_status(tmp_path):
    r = trace(tmp_path / "a", "--syscalls", "getppid,network", "--", sys.executable, KNOWN, "100", "/etc/hostname")
    assert r.returncode == 0, r.stderr
    rows, _ = load(tmp_path / "a")
    allowed = {"getppid"} | set(syscalls.GROUPS["network"])
    names = Counter(x["syscall"] for x in rows)
    assert set(names) <= allowed and names["getppid"] >= 100 and names["connect"] == 1

    assert trace(tmp_path / "b", "--", "/bin/sh", "-c", "exit 7").returncode == 7
    assert trace(tmp_path / "c", "--", "/bin/sh", "-c", "kill -TERM $$").returncode == 128 + 15
    bad = trace(tmp_path / "d", "--syscalls", "getppid,nosuchcall", "--", "/bin/true")
    assert bad.returncode == 2 and "nosuchcall" in bad.stderr
    missing = trace(tmp_path / "e", "--", "/no/such/program")
    assert missing.returncode == 2 and "command not found" in missing.stderr
    assert trace(tmp_path / "f").returncode == 2


def test_calls_that_sleep_or_change_cpu(tmp_path):
    """A call's entry waits in a per-CPU slot; when the task leaves the CPU mid-call the slot moves
    to the task. Sleeps, blocking reads and a CPU hog alongside: every call once, whole."""
    out = tmp_path / "t"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        r = trace(out, "--", sys.executable, str(Path(__file__).parent / "programs" / "sleepers.py"), "6", "60")
    finally:
        hog.kill()
        hog.wait()
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[0])
    rows, meta = load(out)
    assert meta["lost"] == 0
    workers = {}
    for x in rows:
        if x["pid"] == pid and x["tid"] != pid:
            workers.setdefault(x["tid"], []).append(x)
    busy = {tid: calls for tid, calls in workers.items() if sum(c["syscall"] == "getppid" for c in calls) == 60}
    assert len(busy) == 6, {tid: Counter(c["syscall"] for c in calls) for tid, calls in workers.items()}
    for calls in busy.values():
        sleeps = [c for c in calls if c["syscall"] == "clock_nanosleep"]
        # Python sleeps to an absolute deadline set just before the call: a call can take a little
        # less than the 2 ms asked for (seen: 1.97 ms), never much less
        bad = [(c["ret"], c["duration_ns"]) for c in sleeps if not (c["ret"] == 0 and c["duration_ns"] >= 1_500_000)]
        assert len(sleeps) == 60 and not bad, bad
        (read,) = [c for c in calls if c["syscall"] == "read" and c["ret"] == 5]
        assert read["duration_ns"] >= 1_000_000
    assert per_tid_ordered(rows)


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    exe = tmp_path_factory.mktemp("storm") / "getppid"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(STORM_C)], check=True)
    return str(exe)


def test_overflow_is_reported(tmp_path, storm):
    out = tmp_path / "t"
    r = trace(out, "--ring-buffer-bytes", "4KiB", "--progress", "--", storm, "300000")
    assert r.returncode == 0, r.stderr
    raw = (out / "syscalls.parquet").read_bytes()
    assert raw[-4:] == b"PAR1", (len(raw), raw[:8], r.stderr)
    rows, meta = load(out)
    assert meta["lost"] > 0
    got = sum(x["syscall"] == "getppid" for x in rows)
    assert got < 300000 <= got + meta["lost"]
    assert f"lost {meta['lost']:,}" in r.stderr  # the progress line's last state
    assert "WARNING" in r.stderr


def test_large_trace_streams_in_row_groups(tmp_path, storm):
    out = tmp_path / "t"
    r = trace(out, "--", storm, "1200000")
    assert r.returncode == 0, r.stderr
    f = pq.ParquetFile(out / "syscalls.parquet")
    assert f.metadata.num_row_groups >= 2
    _, meta = load(out)
    assert f.metadata.num_rows == meta["captured"] >= 1200000 - meta["lost"]
    assert_duckdb_reads_as_pyarrow(out / "syscalls.parquet")  # segments joined by one footer


def test_parked_records_are_all_written_in_order(tmp_path, storm):
    """Records parked on disk (as under saturated CPUs) reach the Parquet file whole and in order."""
    out = tmp_path / "t"
    r = trace(out, "--park", "always", "--", storm, "300000")
    assert r.returncode == 0, r.stderr
    rows, meta = load(out)
    assert meta["parked_peak_bytes"] > 0 and meta["lost"] == 0
    assert sum(x["syscall"] == "getppid" for x in rows) == 300000
    assert meta["captured"] == len(rows) and per_tid_ordered(rows)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "processes.jsonl", "syscalls.parquet"]


def test_full_disk_while_parking_loses_nothing(tmp_path, storm):
    """The disk fills while records are parked: they are encoded in place and the trace goes on."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        r = trace(small / "t", "--park", "always", "--", storm, "300000")  # 12 MB parked > 3 MB
        assert r.returncode == 0, r.stderr
        assert "cannot park records" in r.stderr and "No space left" in r.stderr
        rows, meta = load(small / "t")
        assert meta["lost"] == 0 and sum(x["syscall"] == "getppid" for x in rows) == 300000
        assert meta["captured"] == len(rows) and per_tid_ordered(rows)
        assert not (small / "t" / ".syscalls.spill").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_ctrl_c_and_duration_stop_cleanly(tmp_path):
    import signal

    # the command drops our pipes, or reading the tracer's stderr would wait for it to end
    sleeper = ["/bin/sh", "-c", "exec sleep 30 </dev/null >/dev/null 2>&1"]

    def reap(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    out = tmp_path / "int"
    tracer = subprocess.Popen([sys.executable, "-m", "sensor", "trace", "-o", str(out), "--", *sleeper],
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    child = None
    try:
        line = tracer.stderr.readline()
        assert "tracing pids" in line
        child = int(re.search(r"pids (\d+)", line).group(1))
        wait_for(lambda: os.path.realpath(f"/proc/{child}/exe").endswith("/sleep"), what="the command to exec")
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(30) == 128 + signal.SIGINT  # the command still runs: no status of its own
        assert "still runs" in tracer.stderr.read()
        os.kill(child, 0)  # left running, no longer traced, as strace leaves what it detaches from
    finally:
        if tracer.poll() is None:
            tracer.kill()
        if child:
            reap(child)
    rows, meta = load(out)
    assert rows[0]["syscall"] == "execve" and meta["exit_code"] is None and meta["captured"] == len(rows)

    r = trace(tmp_path / "dur", "--duration", "1", "--", *sleeper)
    rows, meta = load(tmp_path / "dur")
    reap(meta["pids"][0])
    assert r.returncode == 128 + signal.SIGINT and meta["captured"] == len(rows) > 0
    assert 0.9 < (meta["end_ns"] - meta["start_ns"]) / 1e9 < 10


def test_full_ring_holds_batches_back(tmp_path, storm):
    """The tracer stops reading while two storms run: the 16 KiB ring fills at once and refuses
    every batch after the first few. The kernel holds them back and sends them once there is room
    (or user space reads them after detach): every call of every thread arrives, in order."""
    import signal

    out, n = tmp_path / "t", 3000
    tracer = subprocess.Popen([sys.executable, "-m", "sensor", "trace", "--no-progress", "--ring-buffer-bytes", "16KiB",
                               "-o", str(out), "--", "/bin/sh", "-c", f"{storm} {n} & {storm} {n}; wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        sh = int(re.search(r"pids (\d+)", tracer.stderr.readline()).group(1))
        os.kill(tracer.pid, signal.SIGSTOP)
        # the tracer is the shell's parent and stopped: the finished shell stays a zombie
        wait_for(lambda: Path(f"/proc/{sh}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 what="the storms to end")
        os.kill(tracer.pid, signal.SIGCONT)
        stdout, stderr = tracer.communicate(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert tracer.returncode == 0, stderr
    rows, meta = load(out)
    storms = Counter(x["pid"] for x in rows if x["syscall"] == "getppid" and x["pid"] != sh)
    assert meta["lost"] == 0 and sorted(storms.values()) == [n, n], (meta["lost"], storms)
    assert meta["held_batches"] > 0  # the ring did refuse them
    assert meta["captured"] == len(rows) and per_tid_ordered(rows)
    for pid in [sh, *storms]:  # whole: each ends in its exit_group, the storms' execve is there
        mine = [x["syscall"] for x in rows if x["pid"] == pid]
        assert mine[-1] == "exit_group" and (pid == sh or "execve" in mine), mine[-3:]
