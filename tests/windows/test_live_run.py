"""`sensor run` for real on a Windows host (runs in .github/workflows/windows.yml, elevated): a
process tree with command lines, entity ids and a SigmaHQ-style rule's alert in the store, and a
kill policy that stops a `ping -t`."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import yaml

pytestmark = [pytest.mark.windows_live,
              pytest.mark.skipif(sys.platform != "win32", reason="live `sensor run` test: needs Windows, "
                                 "elevated (runs in .github/workflows/windows.yml)")]


def rule_file(tmp_path, rule_id: str, selection: dict):
    path = tmp_path / f"{rule_id}.yml"
    path.write_text(yaml.safe_dump({
        "title": f"test rule {rule_id}", "id": rule_id, "status": "test", "level": "high",
        "logsource": {"product": "windows", "category": "process_creation"},
        "detection": {"selection": selection, "condition": "selection"}}))
    return path


@contextmanager
def sensor(tmp_path, *args, duration=20):
    """`sensor run` on this host until `duration` passes; yields once its sources are started
    and have settled; always stopped, even when the test fails."""
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--data-dir", str(data), "--console", "off",
                             "--duration", str(duration), "--health-interval", "5", *args],
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    lines, started = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "tracing" in line:
                started.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        assert started.wait(60), "".join(lines)[-3000:]
        time.sleep(3)  # enabling ETW providers settles asynchronously
        yield data, proc, lines
        assert proc.wait(duration + 60) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def stored(data):
    from sensor.store import read_events

    return list(read_events(data))


def test_sensor_run_records_a_process_tree_and_a_sigma_alert(tmp_path):
    tag = f"SENSORTEST-{uuid.uuid4()}"
    rule_id = str(uuid.uuid4())
    rules = rule_file(tmp_path, rule_id, {"CommandLine|contains": tag})
    with sensor(tmp_path, "--rules", f"builtin,{rules}") as (data, _, lines):
        # cmd.exe, and powershell as its child: the tree the entity ids must join
        subprocess.run(["cmd.exe", "/c", f"echo {tag} && powershell -NoProfile -Command Write-Output {tag}-ps"],
                       check=True, capture_output=True)
    events = stored(data)
    execs = [e for e in events if e["event"].get("action") == "exec" and tag in e["process"].get("command_line", "")]
    cmd = [e for e in execs if e["process"]["executable"].lower().endswith("\\cmd.exe")]
    ps = [e for e in execs if e["process"]["executable"].lower().endswith("\\powershell.exe")]
    assert cmd and ps, "".join(lines)[-3000:]
    assert cmd[0]["process"]["parent"]["pid"] == os.getpid()
    assert cmd[0]["process"]["entity_id"] and cmd[0]["process"]["parent"]["entity_id"]
    assert ps[0]["process"]["parent"]["pid"] == cmd[0]["process"]["pid"]
    assert ps[0]["process"]["parent"]["entity_id"] == cmd[0]["process"]["entity_id"]
    alerts = [e for e in events if e["event"]["kind"] == "alert" and e["rule"]["id"] == rule_id]
    assert alerts and any(tag in a["process"].get("command_line", "") for a in alerts)
    health = [e for e in events if e["event"]["dataset"] == "sensor.health"][-1]["sensor"]["health"]
    assert "process" in health["sources"] and "process" not in health.get("fallbacks", {}), health


def test_a_kill_policy_stops_ping(tmp_path):
    rule_id = str(uuid.uuid4())
    rules = rule_file(tmp_path, rule_id, {"Image|endswith": "\\PING.EXE", "CommandLine|contains": "-w 4321"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump([{"match": {"rule.id": rule_id}, "action": "kill"}]))
    with sensor(tmp_path, "--rules", str(rules), "--response-policy", str(policy)) as (data, _, lines):
        ping = subprocess.Popen(["ping", "-t", "-w", "4321", "127.0.0.1"], stdout=subprocess.DEVNULL)
        try:
            code = ping.wait(15)  # TerminateProcess(handle, 1)
        finally:
            if ping.poll() is None:
                ping.kill()
    assert code == 1, "".join(lines)[-3000:]
    responses = [e for e in stored(data) if e["event"].get("action") == "response-kill"]
    assert any(r["sensor"]["response"]["result"] == "success" and ping.pid in r["sensor"]["response"]["pids"]
               for r in responses), responses
