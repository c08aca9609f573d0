"""The local store on real files: rotation, compression, retention, kills, full disks, follow."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import zstandard

from sensor.store import Store, read_events, segments
from conftest import ROOT, wait_for


def ev(i: int, pad: int = 0) -> dict:
    return {"@timestamp": "2026-11-24T10:00:00.000000001Z", "event": {"sequence": i}, "pad": "x" * pad}


def seqs(events) -> list[int]:
    return [e["event"]["sequence"] for e in events]


def test_size_rotation_compresses_and_reads_back_in_order(tmp_path):
    with Store(tmp_path, segment_bytes=4096) as s:
        for i in range(500):
            s.write(ev(i, pad=50))
    files = segments(tmp_path)
    assert len(files) >= 5
    assert all(p.name.endswith(".jsonl.zst") for p in files)
    for p in files:
        assert len(zstandard.ZstdDecompressor().stream_reader(p.open("rb")).read()) <= 4096
    assert seqs(read_events(tmp_path)) == list(range(500))
    assert s.written == 500 and s.dropped == 0


def test_age_rotation(tmp_path):
    s = Store(tmp_path, segment_seconds=0.2, flush_interval=0.05)
    s.write(ev(1))
    s.flush()
    wait_for(lambda: (s.tick(), any(p.name.endswith(".zst") for p in segments(tmp_path)))[1],
             timeout=5, what="age rotation")
    s.write(ev(2))
    s.close()
    assert seqs(read_events(tmp_path)) == [1, 2]


def test_permissions_are_root_only(tmp_path):
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    with Store(d, segment_bytes=200) as s:
        for i in range(20):
            s.write(ev(i))
        s.flush()
        open_files = list((d / "events").iterdir())
        assert open_files
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in open_files)
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "events").stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in (d / "events").iterdir())


def test_retention_drops_oldest_first(tmp_path):
    with Store(tmp_path, segment_bytes=2000, retention_bytes=3000) as s:
        for i in range(2000):
            s.write(ev(i, pad=20))
    files = segments(tmp_path)
    assert sum(f.stat().st_size for f in files) <= 3000
    kept = seqs(read_events(tmp_path))
    assert kept and kept[-1] == 1999 and kept == list(range(kept[0], 2000))
    assert kept[0] > 0


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from sensor.store import Store
s = Store({d!r}, segment_bytes=3000, flush_interval=0.05)
i = 0
while True:
    s.write({{"event": {{"sequence": i}}}})
    i += 1
    if i % 100 == 0:
        s.flush()
        print(i, flush=True)
        time.sleep(0.01)
"""


def test_killed_writer_loses_nothing_flushed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), d=str(tmp_path))],
                         stdout=subprocess.PIPE, text=True)
    try:
        flushed = 0
        while flushed < 1000:
            flushed = int(p.stdout.readline())
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = seqs(read_events(tmp_path))
    assert got[:flushed] == list(range(flushed))
    # a killed writer's open segment, with a torn last line, is recovered by the next store
    plain = [f for f in segments(tmp_path) if not f.name.endswith(".zst")]
    torn = plain[-1] if plain else tmp_path / "events" / "events-99991231T235959.999999Z-1-0001.jsonl"
    with open(torn, "ab") as f:  # as if killed in the middle of a write
        f.write(b'{"event": {"sequen')
    s = Store(tmp_path)
    s.close()
    assert s.recovered_partial == 1
    assert all(f.name.endswith(".zst") for f in segments(tmp_path))
    assert seqs(read_events(tmp_path)) == got
    for f in segments(tmp_path):
        zstandard.ZstdDecompressor().stream_reader(f.open("rb")).read()


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_counts_drops_and_keeps_what_was_written(tiny_disk):
    s = Store(tiny_disk, segment_bytes=1 << 30)
    for i in range(100):
        s.write(ev(i))
    s.flush()
    assert s.written == 100 and s.last_error is None
    for i in range(100, 5000):
        s.write(ev(i, pad=100))  # far more than 64 KiB: must not raise
    s.flush()
    assert s.last_error and "No space left" in s.last_error
    s.close()
    assert s.dropped > 0
    assert s.written + s.dropped == 5000
    got = seqs(read_events(tiny_disk))
    assert got[:100] == list(range(100))
    assert got == list(range(len(got)))


def test_follow_sees_every_event_once_across_rotation(tmp_path):
    s = Store(tmp_path, segment_bytes=1500, flush_interval=0.01)
    seen: list[int] = []
    done = threading.Event()

    def follow():
        gen = read_events(tmp_path, follow=True, poll_interval=0.02)
        for e in gen:
            seen.append(e["event"]["sequence"])
            if len(seen) == 400:
                break
        gen.close()
        done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    for i in range(400):
        s.write(ev(i, pad=10))
        if i % 25 == 0:
            s.flush()
            time.sleep(0.005)
    s.close()
    assert done.wait(20), f"follow saw {len(seen)} of 400"
    assert seen == list(range(400))


def test_since_filters_by_timestamp(tmp_path):
    from sensor.schema import parse_time, rfc3339

    base = parse_time("2026-11-24T10:00:00Z")
    with Store(tmp_path) as s:
        for i in range(10):
            s.write({"@timestamp": rfc3339(base + i * 1_000_000_000), "event": {"sequence": i}})
    assert seqs(read_events(tmp_path, since_ns=base + 5_000_000_000)) == [5, 6, 7, 8, 9]
    assert seqs(read_events(tmp_path, since_ns=base + 4_500_000_000)) == [5, 6, 7, 8, 9]
    assert os.stat(tmp_path).st_mode & 0o777 == 0o700
