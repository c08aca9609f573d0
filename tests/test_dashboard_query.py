"""`sensor query`: DuckDB's `events` view over a real sensor's store (zstd and open segments)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

from conftest import ROOT, wait_for


def query(data_dir, sql, *flags):
    return subprocess.run([sys.executable, "-m", "sensor", "query", sql, "--data-dir", str(data_dir), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_query_reads_closed_and_open_segments(start_sensor, tmp_path):
    marker = f"q-{uuid.uuid4().hex[:8]}"
    # a segment a second: the first exec lands in a compressed segment, the second in the open one
    # (rotating by age: tiny segments by size made a loaded sensor rotate, compress and fsync
    # every few events, and fall behind)
    s = start_sensor("--rules", "none", "--store-segment-seconds", "1")
    events = s.data_dir / "events"

    def closed() -> int:
        return sum(p.name.endswith(".zst") for p in events.iterdir()) if events.exists() else 0

    # the marker split in two: each query's own command line (which the sensor records) never matches
    like, like_one = f"'%{marker[:4]}' || '{marker[4:]}%'", f"'%{marker[:4]}' || '{marker[4:]} one%'"
    count = f"""SELECT count(*) FROM events WHERE "process.command_line" LIKE {like} AND "event.action" = 'exec'"""

    def seen() -> list[str]:
        return query(s.data_dir, count, "--format", "csv").stdout.splitlines()[1:]

    subprocess.run(["/bin/echo", marker, "one"], stdout=subprocess.DEVNULL, check=True)
    wait_for(lambda: seen() == ["1"], timeout=30, what="the first exec in the view")
    before = closed()
    wait_for(lambda: closed() >= before + 2, timeout=30, what="the segment holding the first exec to close")
    subprocess.run(["/bin/echo", marker, "two"], stdout=subprocess.DEVNULL, check=True)
    # while the sensor runs: closed .zst segments and the open plain one, whose last line may be cut
    wait_for(lambda: seen() == ["2"], timeout=30, what="both execs in the view")
    s.stop()
    r = query(s.data_dir, f"""SELECT "process.args", "process.executable", "event.action", "@timestamp"
                               FROM events WHERE "process.command_line" LIKE {like} AND "event.action" = 'exec' ORDER BY "@timestamp" """,
              "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["process.args"] for row in rows] == [["/bin/echo", marker, "one"], ["/bin/echo", marker, "two"]]
    assert {row["event.action"] for row in rows} == {"exec"}
    # the same count as the store's own reader, across every segment
    total = int(query(s.data_dir, "SELECT count(*) FROM events", "--format", "csv").stdout.splitlines()[1])
    assert total == len(s.events())
    nested = query(s.data_dir, f"""SELECT doc->>'$.process.parent.pid' AS ppid FROM events
                                    WHERE "process.command_line" LIKE {like_one} AND "event.action" = 'exec'""", "--format", "csv")
    assert nested.stdout.splitlines()[1].isdigit()


def test_query_errors_are_one_line(tmp_path):
    (tmp_path / "events").mkdir()
    r = query(tmp_path, "SELECT nope FROM events")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr, r.stderr
    r = query(tmp_path / "missing", "SELECT 1")
    assert r.returncode == 2 and "no events under" in r.stderr and r.stderr.count("\n") == 1
    r = query(tmp_path, 'SELECT count(*) AS n FROM events', "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines() == ["n", "0"]
