"""The local store on real files: rotation, compression, retention, kills, full disks, follow."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import zstandard

from conftest import ROOT, wait_for
from sensor.store import Store, parse_timestamp, read_events, segments


def ev(i: int, pad: int = 0) -> dict:
    return {"@timestamp": "2026-11-24T10:00:00.000000001Z", "event": {"sequence": i}, "pad": "x" * pad}


def seqs(events) -> list[int]:
    return [e["event"]["sequence"] for e in events]


def unzstd(path) -> bytes:
    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()


def test_size_rotation_compresses_and_reads_back_in_order(tmp_path):
    with Store(tmp_path, segment_bytes=4096) as s:
        for i in range(500):
            s.write(ev(i, pad=50))
            if i % 7 == 0:
                s.flush()  # partly filled segments must still not overshoot
    files = segments(tmp_path)
    assert len(files) >= 5
    assert all(p.name.endswith(".jsonl.zst") for p in files)
    for p in files:
        data = unzstd(p)
        assert 0 < len(data) <= 4096 and data.endswith(b"\n")
    assert seqs(read_events(tmp_path)) == list(range(500))
    assert (s.written, s.dropped) == (500, 0)


def test_age_rotation(tmp_path):
    s = Store(tmp_path, segment_seconds=0.1, flush_interval=0.01)
    s.write(ev(1))
    s.flush()
    assert [p.name.endswith(".jsonl") for p in segments(tmp_path)] == [True]
    wait_for(lambda: (s.tick(), [p.name[-4:] for p in segments(tmp_path)] == [".zst"])[1],
             timeout=5, what="age rotation")
    s.write(ev(2))
    s.close()
    assert len(segments(tmp_path)) == 2
    assert seqs(read_events(tmp_path)) == [1, 2]


def test_permissions_are_root_only(tmp_path):
    d = tmp_path / "data"
    (d / "events").mkdir(parents=True)
    os.chmod(d, 0o755)
    os.chmod(d / "events", 0o777)
    old = os.umask(0)  # a permissive umask must not leak into what we create
    try:
        s = Store(d, segment_bytes=200)
        for i in range(20):
            s.write(ev(i))
        s.flush()
        files = list((d / "events").iterdir())
        assert any(f.name.endswith(".jsonl") for f in files) and any(f.name.endswith(".zst") for f in files)
        assert {f.stat().st_mode & 0o777 for f in files} == {0o600}
        s.close()
        fresh = tmp_path / "new" / "data"
        Store(fresh).close()
    finally:
        os.umask(old)
    for p in (d, d / "events", fresh, fresh / "events"):
        assert p.stat().st_mode & 0o777 == 0o700, p
    assert {f.stat().st_mode & 0o777 for f in (d / "events").iterdir()} == {0o600}


def test_retention_drops_oldest_first_never_the_open_segment(tmp_path):
    s = Store(tmp_path, segment_bytes=2000, retention_bytes=1000)
    for i in range(600):
        s.write(ev(i, pad=20))
    s.flush()
    closed = [f for f in segments(tmp_path) if f.name.endswith(".zst")]
    assert sum(f.stat().st_size for f in closed) <= 1000
    s.retention_bytes = 0  # even then the open segment stays
    s.write(ev(600))
    s.rotate()
    s.write(ev(601))
    s.flush()
    assert [f.name.endswith(".jsonl") for f in segments(tmp_path)] == [True]
    assert seqs(read_events(tmp_path)) == [601]
    s.close()

    with Store(tmp_path / "b", segment_bytes=2000, retention_bytes=1000) as s:
        for i in range(600):
            s.write(ev(i, pad=20))
    files = segments(tmp_path / "b")
    assert sum(f.stat().st_size for f in files) <= 1000
    kept = seqs(read_events(tmp_path / "b"))
    assert kept[0] > 0 and kept == list(range(kept[0], 600))


def test_close_leaves_only_compressed_segments(tmp_path):
    s = Store(tmp_path, flush_interval=60)
    for i in range(10):
        s.write(ev(i))
    assert segments(tmp_path) == []  # still buffered
    s.close()
    s.close()
    assert [f.name.endswith(".jsonl.zst") for f in segments(tmp_path)] == [True]
    assert seqs(read_events(tmp_path)) == list(range(10))
    Store(tmp_path / "empty").close()
    assert os.listdir(tmp_path / "empty" / "events") == []


def test_unserializable_event_is_counted_not_raised(tmp_path):
    with Store(tmp_path) as s:
        s.write(ev(0))
        s.write({"bad": {1, 2}})
        s.write(ev(1))
    assert (s.written, s.dropped) == (2, 1)
    assert seqs(read_events(tmp_path)) == [0, 1]


WRITER = """
import sys
from sensor.store import Store
s = Store(sys.argv[1], segment_bytes=3000, flush_interval=60)
i = 0
while True:
    s.write({"event": {"sequence": i}, "pad": "y" * 40})
    i += 1
    if i % 100 == 0:
        s.flush()
        print(i, flush=True)
"""


def test_killed_writer_loses_nothing_flushed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        flushed = 0
        while flushed < 2000:
            line = p.stdout.readline()
            assert line, "writer died"
            flushed = int(line)
        p.send_signal(signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = seqs(read_events(tmp_path))
    assert len(got) >= flushed and got == list(range(len(got)))
    for f in segments(tmp_path):
        if f.name.endswith(".zst"):
            assert unzstd(f).endswith(b"\n")
    # as if killed in the middle of a line: the reader skips it, recovery cuts it
    plain = [f for f in segments(tmp_path) if f.name.endswith(".jsonl")]
    torn = plain[-1] if plain else tmp_path / "events" / "events-99991231T235959.999999Z-1-0001.jsonl"
    with open(torn, "ab") as f:
        f.write(b'{"a": 1')
    assert seqs(read_events(tmp_path)) == got
    s = Store(tmp_path)
    assert s.recovered_partial == 1
    s.close()
    assert all(f.name.endswith(".jsonl.zst") for f in segments(tmp_path))
    assert seqs(read_events(tmp_path)) == got


def test_live_segment_of_another_store_is_not_recovered(tmp_path):
    a = Store(tmp_path)
    a.write(ev(0))
    a.flush()
    open_segment = segments(tmp_path)[0]
    Store(tmp_path).close()
    assert open_segment.exists()
    a.write(ev(1))
    a.close()
    assert seqs(read_events(tmp_path)) == [0, 1]


def test_bad_lines_are_skipped_with_file_and_line(tmp_path, caplog):
    (tmp_path / "events").mkdir()
    seg = tmp_path / "events" / "events-20260101T000000.000000Z-1-0001.jsonl"
    seg.write_bytes(b'{"event": {"sequence": 0}}\nnot json\n[1]\n{"event": {"sequence": 1}}\n{"event": {"seq')
    with caplog.at_level(logging.WARNING, "sensor.store"):
        assert seqs(read_events(tmp_path)) == [0, 1]
    warned = [r.getMessage() for r in caplog.records]
    assert f"{seg}:2: not a JSON event, skipped" in warned and f"{seg}:3: not a JSON event, skipped" in warned
    assert len(warned) == 2  # the torn tail is not an error


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"mounting a tiny tmpfs to fill needs root: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_counts_drops_keeps_what_was_written_and_retries(tiny_disk, caplog):
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * (96 << 10))
    s = Store(tiny_disk / "data", segment_bytes=1 << 30, flush_interval=0.01, pending_bytes=32 << 10)
    try:
        for i in range(100):
            s.write(ev(i))
        s.flush()
        assert (s.written, s.last_error) == (100, None)
        with caplog.at_level(logging.WARNING, "sensor.store"):
            for i in range(100, 3000):
                s.write(ev(i, pad=100))  # ~500 KiB into a 256 KiB disk: must not raise
            s.flush()
            s.flush()
        assert "No space left on device" in s.last_error
        assert s.dropped > 0 and 100 < s.written < 3000
        assert sum("No space left" in r.getMessage() for r in caplog.records) == 1  # once, not per write
        plain = [f for f in segments(tiny_disk / "data") if f.name.endswith(".jsonl")]
        assert plain[-1].read_bytes().endswith(b"\n")  # a torn line was cut off again
        written_while_full = s.written
        ballast.unlink()
        s.flush()  # the retry writes what was kept in memory
        assert s.written > written_while_full
        s.write(ev(3000))
    finally:
        s.close()
    assert s.written + s.dropped == 3001
    got = seqs(read_events(tiny_disk / "data"))
    assert len(got) == s.written
    assert got[:100] == list(range(100)) and got[-1] == 3000 and got == sorted(set(got))
    assert [f.name[-4:] for f in segments(tiny_disk / "data")] == [".zst"]


def test_follow_sees_every_event_once_across_rotations_and_restarts(tmp_path):
    seen: list[int] = []
    gen = read_events(tmp_path, follow=True, poll_interval=0.02)

    def follow():
        for e in gen:
            if e.get("stop"):
                break
            seen.append(e["event"]["sequence"])
        gen.close()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    s = Store(tmp_path, segment_bytes=1500, flush_interval=0.01)
    i = 0
    for round_ in range(12):
        for _ in range(30):
            s.write(ev(i, pad=10))
            i += 1
        s.flush()
        if round_ % 3 == 0:
            # the follower is idle at the end of the open segment; more lines land in it and
            # it is compressed away before the follower looks again
            wait_for(lambda: len(seen) == i, timeout=5, what=f"follower to reach {i}")
            time.sleep(0.05)
            for _ in range(5):
                s.write(ev(i))
                i += 1
            s.rotate()
        if round_ == 7:
            s.close()  # a new writer: a new segment appears
            s = Store(tmp_path, segment_bytes=1500, flush_interval=0.01)
    s.write({"stop": True})
    s.close()
    t.join(10)
    assert not t.is_alive(), f"follow saw {len(seen)} of {i}"
    assert seen == list(range(i))


def test_parse_timestamp_and_since(tmp_path):
    base = int(datetime(2026, 11, 24, 23, 38, 1, tzinfo=timezone.utc).timestamp()) * 10**9
    assert parse_timestamp("2026-11-24T23:38:01Z") == base
    assert parse_timestamp("2026-11-24T23:38:01.5Z") == base + 500_000_000
    assert parse_timestamp("2026-11-24T23:38:01.123456Z") == base + 123_456_000
    assert parse_timestamp("2026-11-24T23:38:01.123456789Z") == base + 123_456_789
    stamps = ["2026-11-24T23:38:00.999999999Z", "2026-11-24T23:38:01Z", "2026-11-24T23:38:01.000000001Z",
              "2026-11-24T23:38:01.5Z", "2026-11-24T23:38:02.25Z"]
    with Store(tmp_path) as s:
        for i, ts in enumerate(stamps):
            s.write({"@timestamp": ts, "event": {"sequence": i}})
    assert seqs(read_events(tmp_path, since_ns=base)) == [1, 2, 3, 4]
    assert seqs(read_events(tmp_path, since_ns=base + 1)) == [2, 3, 4]
    assert seqs(read_events(tmp_path, since_ns=base + 600_000_000)) == [4]
    assert seqs(read_events(tmp_path, since_ns=base + 10**10)) == []
