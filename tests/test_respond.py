"""Response on the real kernel: blocked executables never run; matching processes are killed
through a pidfd; pid 1, the sensor and allow-listed processes are never touched."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from sensor.errors import ConfigError
from sensor.respond import Responder, load
from conftest import wait_for


def rule(dirpath, rid, marker):
    (dirpath / f"{marker}.yml").write_text(yaml.safe_dump({
        "title": f"marker {marker}", "id": rid, "status": "test", "author": "tester", "level": "high",
        "logsource": {"category": "process_creation", "product": "linux"},
        "detection": {"sel": {"CommandLine|contains": marker}, "condition": "sel"}}))


def test_block_exec_kills_before_the_first_instruction(start_sensor, tmp_path):
    bad, good = tmp_path / "badtool", tmp_path / "goodtool"
    shutil.copy("/usr/bin/touch", bad)
    shutil.copy("/usr/bin/touch", good)  # same bytes, another inode: not blocked
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump([{"action": "block-exec", "executables": [str(bad)]}]))
    s = start_sensor("--response-policy", str(policy), "--rules", "none")
    r = subprocess.run([str(bad), str(tmp_path / "marker-bad")])
    assert r.returncode == -9
    assert not (tmp_path / "marker-bad").exists()  # its side effect never happened
    assert subprocess.run([str(good), str(tmp_path / "marker-good")]).returncode == 0
    assert (tmp_path / "marker-good").exists()
    s.stop()
    (ev,) = [e for e in s.events(event__action="exec") if e["process"]["executable"] == str(bad)]
    assert ev["event"]["type"] == ["start", "denied"] and ev["sensor"]["blocked"] is True
    assert not [e for e in s.events(event__action="exec") if e["process"]["executable"] == str(good)
                and e.get("sensor", {}).get("blocked")]


def test_kill_policy_allow_list_and_dry_run(start_sensor, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    rule(rules, "11111111-1111-4111-8111-111111111111", "kill-me-7c1e")
    rule(rules, "22222222-2222-4222-8222-222222222222", "spare-me-7c1e")
    rule(rules, "33333333-3333-4333-8333-333333333333", "dry-run-7c1e")
    sleeper = str(shutil.copy(os.path.realpath(sys.executable), tmp_path / "python-copy"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "allow": {"executables": [sleeper]},
        "policies": [
            {"match": {"rule.id": "11111111-1111-4111-8111-111111111111"}, "action": "kill"},
            {"match": {"rule.id": "22222222-2222-4222-8222-222222222222"}, "action": "kill"},
            {"match": {"rule.id": "33333333-3333-4333-8333-333333333333"}, "action": "kill", "dry_run": True},
        ]}))
    s = start_sensor("--rules", str(rules), "--response-policy", str(policy))
    nap = "import time, sys; time.sleep(float(sys.argv[1]))"
    victim = subprocess.Popen([sys.executable, "-c", nap, "30", "kill-me-7c1e"])
    spared = subprocess.Popen([sleeper, "-c", nap, "1.5", "spare-me-7c1e"])
    dry = subprocess.Popen([sys.executable, "-c", nap, "1.5", "dry-run-7c1e"])
    try:
        t0 = time.monotonic()
        assert victim.wait(15) == -9
        killed_after = time.monotonic() - t0
        assert spared.wait(15) == 0 and dry.wait(15) == 0
    finally:
        for p in (victim, spared, dry):
            if p.poll() is None:
                p.kill()
                p.wait()
    s.stop()
    responses = {r["process"]["pid"]: r for r in s.events(event__dataset="response")}
    assert responses[victim.pid]["sensor"]["response"]["result"] == "success"
    assert responses[victim.pid]["event"]["outcome"] == "success" and killed_after < 5
    assert responses[spared.pid]["sensor"]["response"]["result"] == "skipped"
    assert "allow-listed" in responses[spared.pid]["event"]["reason"]
    assert responses[dry.pid]["sensor"]["response"]["dry_run"] is True
    assert "dry run" in responses[dry.pid]["event"]["reason"]


def test_protected_processes_are_never_killed(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump([{"match": {"rule.level": "high"}, "action": "kill"}]))
    r = Responder(load(policy), boot_offset_ns=0)
    for pid in (1, 2, os.getpid(), os.getppid()):
        alert = {"rule": {"level": "high"}, "process": {"pid": pid}, "event": {"id": "a"}}
        (resp,) = r.respond(alert)
        assert resp["sensor"]["response"]["result"] == "skipped", pid
    os.kill(1, 0)  # pid 1 is alive


def test_bad_policies_name_file_and_line(tmp_path):
    p = tmp_path / "p.yaml"
    cases = {
        "- action: explode\n": "action",
        "- action: kill\n  match: {process.name: x}\n": "match needs keys",
        "- action: block-exec\n  executables: [/no/such/file]\n": "missing",
        "- action: kill\n  match: {rule.id: x}\n- action: quarantine\n  match: {rule.id: y}\n": ":3:",
        "- action: [unclosed\n": "invalid YAML",
    }
    for text, expect in cases.items():
        p.write_text(text)
        with pytest.raises(ConfigError) as err:
            load(p)
        assert str(p) in str(err.value) and expect in str(err.value), (text, str(err.value))
