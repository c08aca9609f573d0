"""The watchdog file backend: real files, real inotify, the same event shape as the kernel source."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sensor.schema import unescape
from sensor.watch import WatchdogFileSource

from conftest import wait_for


@pytest.fixture
def source(tmp_path):
    w = tmp_path / "w"
    (w / "skip").mkdir(parents=True)
    s = WatchdogFileSource([str(w)], [str(w / "skip")], coalesce_seconds=0.3).start()
    s.dir = w
    yield s
    s.close()


def collect(source, until, timeout=10):
    got = []

    def done():
        got.extend(source.poll())
        return until(got)
    wait_for(done, timeout=timeout, what="watchdog events")
    time.sleep(0.5)  # anything that should not come would come now
    got.extend(source.poll())
    return got


def test_operations_give_the_kernel_sources_event_shape(source):
    w = source.dir
    (w / "a.txt").write_text("hello")
    time.sleep(0.4)  # a window of its own, so the create is not folded with what follows
    os.rename(w / "a.txt", w / "b.txt")
    os.chmod(w / "b.txt", 0o600)  # inotify says attrib: reported as a write
    (w / "d").mkdir()
    (w / "d").rmdir()
    (w / "skip" / "hidden").write_text("x")
    (w / "b.txt").unlink()
    evs = collect(source, lambda got: any(e["event"]["action"] == "delete" for e in got))
    summary = [(e["event"]["action"], e["file"]["path"], e["file"].get("original", {}).get("path")) for e in evs]
    d = str(w)
    assert summary[0] == ("create", f"{d}/a.txt", None)
    assert ("write", f"{d}/a.txt", None) in summary
    assert summary[-5:] == [("rename", f"{d}/b.txt", f"{d}/a.txt"), ("write", f"{d}/b.txt", None),
                            ("mkdir", f"{d}/d", None), ("rmdir", f"{d}/d", None), ("delete", f"{d}/b.txt", None)]
    assert not [s for s in summary if "skip" in s[1]]  # excluded
    by = {e["event"]["action"]: e for e in evs}  # the last of each: the write is the chmod's
    assert by["create"]["event"] == {"kind": "event", "category": ["file"], "type": ["creation"],
                                     "action": "create", "dataset": "file", "module": "watchdog"}
    assert by["create"]["file"]["name"] == "a.txt" and by["create"]["file"]["extension"] == "txt"
    assert by["mkdir"]["file"]["type"] == "dir" and by["delete"]["event"]["type"] == ["deletion"]
    assert by["rename"]["file"]["original"]["name"] == "a.txt"
    assert by["write"]["file"]["write_count"] == 1 and "write_bytes" not in by["write"]["file"]
    assert by["rmdir"]["file"]["type"] == "dir" and by["create"]["file"]["type"] == "file"
    assert "process" not in by["create"]  # the OS does not say who


def test_storm_is_coalesced_and_every_create_reported_once(source):
    w = source.dir
    n_files = 2000
    code = f"""
import os, time
fd = os.open("{w}/storm.log", os.O_CREAT | os.O_WRONLY)
for i in range(100000):
    os.write(fd, b"x")
    if i % 250 == 0:  # let the observer read: inotify merges the writes of an unread queue into one
        time.sleep(0.002)
os.close(fd)
for i in range({n_files}):
    open(f"{w}/f{{i}}", "w").close()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    evs = collect(source, lambda got: sum(e["event"]["action"] == "create" for e in got) >= n_files + 1, timeout=30)
    writes = [e for e in evs if e["event"]["action"] == "write" and e["file"]["name"] == "storm.log"]
    assert 1 <= len(writes) < 20, len(writes)
    assert sum(e["file"]["write_count"] for e in writes) > 100  # thousands of notifications, folded
    creates = [e["file"]["name"] for e in evs if e["event"]["action"] == "create"]
    assert sorted(creates) == sorted(["storm.log"] + [f"f{i}" for i in range(n_files)])  # each once
    assert source.stats()["lost_user"] == 0


def test_a_file_that_still_exists_carries_its_inode_facts(source):
    f = source.dir / "kept.sh"
    f.write_text("#!/bin/sh\n")
    os.chmod(f, 0o750)
    evs = collect(source, lambda got: got)
    st = os.stat(f)
    for e in evs:
        assert e["file"]["path"] == str(f) and e["file"]["extension"] == "sh"
        assert e["file"]["mode"] == "0750" and e["file"]["type"] == "file"
        assert (e["file"]["uid"], e["file"]["gid"]) == (str(st.st_uid), str(st.st_gid))
        assert e["file"]["inode"] == str(st.st_ino) and e["file"]["size"] == st.st_size
    assert [e["event"]["action"] for e in evs] == ["create", "write"]


def test_overflow_is_counted_never_silent(tmp_path):
    s = WatchdogFileSource([str(tmp_path)], coalesce_seconds=0.2, max_pending=10).start()
    try:
        for i in range(50):
            (tmp_path / f"f{i}").touch()
        evs = collect(s, lambda got: s.stats()["lost_user"] + len(got) >= 50 and not s._raw)
    finally:
        s.close()
    lost = s.stats()["lost_user"]
    assert len(evs) + lost == 50 and lost >= 30  # each create either reported or counted


def test_hostile_names_are_escaped(source):
    w = source.dir
    nasty = os.fsencode(str(w)) + b"/bad\xff\nname"
    with open(nasty, "w"):
        pass
    evs = collect(source, lambda got: any(e["event"]["action"] == "create" for e in got))
    [e] = [e for e in evs if e["event"]["action"] == "create"]
    assert unescape(e["file"]["path"]) == nasty and "file.path" in e["sensor"]["escaped"]


def test_sensor_with_watchdog_backend_never_reports_its_own_data_dir(start_sensor, tmp_path):
    s = start_sensor("--files-backend", "watchdog", "--files-paths", str(tmp_path), "--no-process-enabled",
                     "--no-metrics-enabled", "--no-network-enabled", "--no-security-enabled", "--rules", "none",
                     data_dir=tmp_path / "data")
    (tmp_path / "seen.txt").write_text("x")
    nasty = os.fsencode(str(tmp_path)) + b"/evil\n\xfe.txt"
    open(nasty, "w").close()
    wait_for(lambda: len(s.events(event__dataset="file")) >= 3, what="file events")
    time.sleep(2)  # the store has flushed and rotated files under the watched dir meanwhile
    assert s.stop() == 0
    evs = s.events(event__dataset="file")
    assert {e["event"]["module"] for e in evs} == {"watchdog"}
    assert any(e["file"]["path"] == str(tmp_path / "seen.txt") for e in evs)
    [bad] = [e for e in evs if e["event"]["action"] == "create" and e["file"]["name"].startswith("evil")]
    assert unescape(bad["file"]["path"]) == nasty and bad["sensor"]["escaped"] == ["file.path"]
    assert not [e for e in evs if e["file"]["path"].startswith(str(tmp_path / "data") + "/")]
    assert len(evs) < 20  # no feedback loop of the store's own writes
