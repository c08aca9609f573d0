"""Labelled recordings of a whole host: `sensor run --label`, `sensor label add|list`, and
`sensor dataset export --from-store` over a real sensor's store, read back by DuckDB and pandas."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pytest

from conftest import ROOT, wait_for
from sensor.schema import parse_time, rfc3339


def sensor(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def watched(tmp_path):
    d = tmp_path / "watched"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_labelled_run_exported_per_dataset(start_sensor, tmp_path, watched):
    data = tmp_path / "data"
    s = start_sensor("--label", "attack:test-x", "--files-paths", str(watched), "--metrics-interval", "0.5",
                     data_dir=data)
    # real activity: an exec, a file write in the watched dir, a TCP connect to a local listener
    marker = f"labels-{time.time_ns()}"
    subprocess.run(["/bin/sh", "-c", f": {marker}"], check=True)
    (watched / "payload.txt").write_text("x" * 100)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            srv.accept()[0].close()
    wait_for(lambda: s.events(event__action="connect", destination__port=port), timeout=20, what="the connect")
    wait_for(lambda: s.events(event__dataset="file", file__name="payload.txt"), timeout=20, what="the write")
    wait_for(lambda: s.events(event__dataset="host.metrics"), timeout=20, what="a host.metrics sample")
    # a window around the connect, later in the run than the exec: labelled normal by the window
    connect = s.events(event__action="connect", destination__port=port)[0]
    t = parse_time(connect["@timestamp"])
    # RFC 3339 to the nanosecond: Unix seconds as a float lose up to ~250 ns here, and a bound
    # that fell into the connect's microsecond missed it (export compares at microseconds)
    sensor("label", "add", "--data-dir", str(data), "--from", rfc3339(t - 1000), "--to", rfc3339(t + 1000), "normal")
    assert s.stop() == 0

    events = s.events()
    assert events and all(e["labels"]["run"] == "attack:test-x" for e in events)
    listed = sensor("label", "list", "--data-dir", str(data), "--json").stdout.splitlines()
    assert [json.loads(x)["label"] for x in listed] == ["normal"]

    out = tmp_path / "out"
    r = sensor("dataset", "export", "--from-store", str(data), "--format", "parquet", "-o", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    stored = {}
    for e in events:
        stored[e["event"]["dataset"]] = stored.get(e["event"]["dataset"], 0) + 1
    tables = {t["dataset"]: t for t in manifest["tables"]}
    assert {d: t["rows"] for d, t in tables.items()} == stored, r.stdout
    assert {"process", "file", "network", "host.metrics", "sensor.health"} <= set(tables)
    for d, t in tables.items():
        path = out / t["path"]
        assert t["path"] == f"{d}.parquet"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == t["sha256"]
        assert duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()[0][0] == t["rows"]
        assert len(pd.read_parquet(path)) == t["rows"]
    assert manifest["label_windows"][0]["label"] == "normal"
    assert manifest["runs"][-1]["label"] == "attack:test-x" and manifest["runs"][-1]["config"]["data_dir"] == str(data)
    assert manifest["hosts"] == [socket.gethostname()] and manifest["sensor_version"]

    # typed columns from the schema, the label from the window or the run, the rest in doc
    net = pd.read_parquet(out / "network.parquet")
    conn = net[(net["event.action"] == "connect") & (net["destination.port"] == port)]
    assert len(conn) == 1 and conn.iloc[0]["label"] == "normal" and conn.iloc[0]["label_source"] == "window"
    assert str(net["@timestamp"].dtype).startswith("datetime64") and conn.iloc[0]["host.name"] == socket.gethostname()
    proc = duckdb.sql(f"""SELECT label, label_source, "process.args", doc FROM '{out}/process.parquet'
                          WHERE "event.action" = 'exec' AND list_contains("process.args", ': {marker}')""").fetchall()
    assert proc and proc[0][:2] == ("attack:test-x", "run")
    doc = json.loads(proc[0][3])
    assert "args" not in doc.get("process", {}) and doc["agent"]["type"] == "sensor"
    files = duckdb.sql(f"""SELECT "file.path", "file.write_bytes", label FROM '{out}/file.parquet'
                           WHERE "file.name" = 'payload.txt' AND "event.action" = 'write'""").fetchall()
    assert files and files[0][0] == str(watched / "payload.txt") and files[0][1] == 100
    labels = duckdb.sql(f"SELECT DISTINCT label FROM '{out}/*.parquet' ORDER BY 1").fetchall()
    assert labels == [("attack:test-x",), ("normal",)]
    assert sum(tables["network"]["labels"].values()) == tables["network"]["rows"]


def test_unlabelled_events_and_bad_input(start_sensor, tmp_path):
    data = tmp_path / "data"
    s = start_sensor("--no-files-enabled", "--no-network-enabled", "--no-security-enabled",
                     data_dir=data)
    wait_for(lambda: s.events(event__dataset="sensor.health"), timeout=20, what="a health event")
    assert s.stop() == 0
    out = tmp_path / "out"
    sensor("dataset", "export", "--from-store", str(data), "--format", "parquet", "-o", str(out))
    assert duckdb.sql(f"SELECT DISTINCT label, label_source FROM '{out}/*.parquet'").fetchall() == [("unlabelled", "none")]

    def error(*args):
        p = sensor(*args, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        return p.stderr

    assert "parquet only" in error("dataset", "export", "--from-store", str(data), "--format", "lidds", "-o", str(out))
    assert "--from must be before --to" in error("label", "add", "--data-dir", str(data), "--from", "now",
                                                 "--to", "1h", "normal")
    assert "expected normal or attack:NAME" in error("label", "add", "--data-dir", str(data), "--from", "1h", "evil")
    assert "--from 'yesterday'" in error("label", "add", "--data-dir", str(data), "--from", "yesterday", "normal")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no events under" in error("dataset", "export", "--from-store", str(empty), "--format", "parquet",
                                      "-o", str(tmp_path / "o2"))
    assert not (tmp_path / "o2").exists() and not (data / "labels.jsonl").exists()
    assert "--label" in error("run", "--data-dir", str(tmp_path / "d2"), "--label", "attack:")
    (data / "labels.jsonl").write_text("{not json\n")
    assert "labels.jsonl:1: invalid JSON" in error("label", "list", "--data-dir", str(data))
