"""Sigma detection: every shared rule loads, modifiers behave as Sigma defines them, and real
behaviour on this machine raises the right alerts (with the rule's author) while benign commands
raise none."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sensor.rules import RuleSet, alert
from conftest import ROOT

SIGMA = ROOT.parent / "shared" / "sigma" / "rules"
needs_sigma = pytest.mark.skipif(not SIGMA.is_dir(), reason=f"SigmaHQ test rules not found at {SIGMA}")


def rule_file(tmp_path, name, detection: dict, category="process_creation", **extra) -> Path:
    doc = {"title": name, "id": f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}", "status": "test",
           "author": "tester", "level": "high", "logsource": {"category": category, "product": "linux"},
           "detection": detection, **extra}
    p = tmp_path / f"{name}.yml"
    p.write_text(yaml.safe_dump(doc))
    return p


def proc(cmd: str, exe: str = "/usr/bin/bash", **more) -> dict:
    return {"event": {"category": ["process"], "action": "exec", "id": "e1", "sequence": 1, "dataset": "process"},
            "process": {"executable": exe, "command_line": cmd, "args": cmd.split(), **more},
            "user": {"name": "root"}}


@needs_sigma
def test_every_shared_rule_loads_or_says_why():
    rules = RuleSet.load([SIGMA])
    files = sorted(SIGMA.rglob("*.yml"))
    assert len(rules.reports) == len(files)
    for r in rules.reports:
        assert r.status in ("ok", "unsupported"), r
        assert r.status == "ok" or r.reason
    authors = {yaml.safe_load(Path(r.path).read_text())["id"]: yaml.safe_load(Path(r.path).read_text())["author"]
               for r in rules.reports}
    for r in rules.rules:
        assert r.author == authors[r.id]


def test_modifiers_and_conditions(tmp_path):
    cases = [  # (detection, event that matches, event that does not)
        ({"sel": {"CommandLine|contains": "NeedLe"}, "condition": "sel"}, proc("a needle b"), proc("a nedle")),
        ({"sel": {"Image|startswith": "/tmp/"}, "condition": "sel"}, proc("x", "/tmp/x"), proc("x", "/usr/tmp/x")),
        ({"sel": {"Image|endswith": ["/nc", "/ncat"]}, "condition": "sel"}, proc("x", "/bin/NCAT"), proc("x", "/bin/cat")),
        ({"sel": {"CommandLine|contains|all": ["-e", "/bin/sh"]}, "condition": "sel"},
         proc("nc -e /bin/sh 1.2.3.4"), proc("nc -e /bin/bash")),
        ({"sel": {"CommandLine|re": r"^curl\s+-F\s"}, "condition": "sel"}, proc("curl -F x"), proc("xcurl -F x")),
        ({"sel": {"CommandLine": "exact match"}, "condition": "sel"}, proc("EXACT match"), proc("exact match!")),
        ({"sel": {"CommandLine": r"a\*b"}, "condition": "sel"}, proc("a*b"), proc("aXb")),
        ({"sel": {"CommandLine": "a?c*"}, "condition": "sel"}, proc("abcdef"), proc("acdef")),
        ({"sel": {"CommandLine|windash|contains": " -enc "}, "condition": "sel"}, proc("ps /enc x"), proc("ps enc x")),
        ({"sel": {"CommandLine|base64offset|contains": "stratum"}, "condition": "sel"},
         proc("echo c3RyYXR1bSt0Y3A6Ly9"), proc("echo stratum")),
        ({"sel": {"ParentImage|exists": True}, "condition": "sel"},
         proc("x", parent={"executable": "/bin/sh"}), proc("x")),
        ({"sel_a": {"CommandLine|contains": "a"}, "sel_b": {"CommandLine|contains": "b"},
          "filter_main_x": {"CommandLine|contains": "x"}, "condition": "1 of sel_* and not 1 of filter_main_*"},
         proc("b"), proc("ab x")),
        ({"sel_a": {"CommandLine|contains": "a"}, "sel_b": {"CommandLine|contains": "b"}, "condition": "all of sel_*"},
         proc("ab"), proc("a")),
        ({"keywords": ["evil.example"], "condition": "keywords"}, proc("curl evil.example"), proc("curl good")),
        ({"sel": {"ProcessId|gte": 100}, "condition": "sel"}, proc("x", pid=150), proc("x", pid=50)),
    ]
    for i, (det, yes, no) in enumerate(cases):
        rules = RuleSet.load([rule_file(tmp_path, f"case{i}", det)])
        assert [r.status for r in rules.reports] == ["ok"], (det, rules.reports)
        assert rules.match(yes), det
        assert not rules.match(no), det
    net = RuleSet.load([rule_file(tmp_path, "net", {"sel": {"DestinationIp|cidr": "10.0.0.0/8", "DestinationPort": 4444},
                                                    "condition": "sel"}, category="network_connection")])
    ev = {"event": {"category": ["network"], "action": "connect", "dataset": "network"},
          "destination": {"ip": "10.1.2.3", "port": 4444}}
    assert net.match(ev) and not net.match({**ev, "destination": {"ip": "11.1.2.3", "port": 4444}})


def test_unsupported_and_broken_rules_are_reported_not_fatal(tmp_path):
    ok = rule_file(tmp_path, "fine", {"sel": {"CommandLine|contains": "x"}, "condition": "sel"})
    win = rule_file(tmp_path, "win", {"sel": {"Image|endswith": "\\cmd.exe"}, "condition": "sel"})
    win.write_text(win.read_text().replace("product: linux", "product: windows"))
    nofield = rule_file(tmp_path, "nofield", {"sel": {"Hashes|contains": "MD5="}, "condition": "sel"})
    broken = tmp_path / "broken.yml"
    broken.write_text("title: broken\ndetection: [unclosed\n")
    badmod = rule_file(tmp_path, "badmod", {"sel": {"CommandLine|nosuchmodifier": "x"}, "condition": "sel"})
    rules = RuleSet.load([tmp_path])
    by = {Path(r.path).stem: r for r in rules.reports}
    assert by["fine"].status == "ok"
    assert by["win"].status == "unsupported" and "windows" in by["win"].reason
    assert by["nofield"].status == "unsupported" and "Hashes" in by["nofield"].reason
    assert by["broken"].status == "error" and by["badmod"].status == "error"
    assert [r.title for r in rules.rules] == ["fine"]
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", "--json", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["status"] for x in rows} == {"ok", "unsupported", "error"}
    assert all({"path", "id", "title", "status", "reason"} <= set(x) for x in rows)


def test_alert_carries_rule_author_attack_and_trigger(tmp_path):
    p = rule_file(tmp_path, "tagged", {"sel": {"CommandLine|contains": "x"}, "condition": "sel"},
                  tags=["attack.execution", "attack.t1059.004"], author="Jane Doe, John Roe")
    rules = RuleSet.load([p])
    ev = proc("x", pid=7)
    a = alert(rules.match(ev)[0], ev)
    assert a["event"]["kind"] == "alert" and a["event"]["severity"] == 73
    assert a["rule"]["author"] == "Jane Doe, John Roe" and a["rule"]["name"] == "tagged"
    assert a["threat"]["technique"][0]["id"] == "T1059"
    assert a["threat"]["technique"][0]["subtechnique"][0]["id"] == "T1059.004"
    assert a["threat"]["tactic"] == [{"name": "execution"}]
    assert a["process"]["pid"] == 7 and a["sensor"]["trigger"]["id"] == "e1"


@needs_sigma
def test_real_behaviour_raises_the_right_alerts(start_sensor, tmp_path):
    s = start_sensor("--rules", f"{SIGMA},builtin")
    work = tmp_path / "w"
    work.mkdir()
    script = work / "job.sh"
    script.write_text("exit 0\n")
    true_copy = work / "true"
    shutil.copy("/bin/true", true_copy)
    (work / ".bash_history").write_text("ls\n")
    behaviours = {  # rule id -> command performing the behaviour for real
        "5d0f7c38-3f5e-4d6b-9a55-0b7e2f0c1a01": ["/bin/sh", str(script)],
        "312b42b1-bded-4441-8b58-163a3af58775": [str(true_copy)],
        "9069ea3c-b213-4c52-be13-86506a227ab1": ["/bin/echo", "--donate-level=0"],
        "ba592c6d-6888-43c3-b8c6-689b8fe47337": ["/bin/sh", "-c", "echo dHJ1ZQo= | base64 -d | sh"],
        "1182f3b3-e716-4efa-99ab-d2685d04360f": ["/bin/rm", "-f", str(work / ".bash_history")],
        "c4042d54-110d-45dd-a0e1-05c47822c937": [sys.executable, "-c", "import pty; pty.spawn('/bin/true')"],
        # fileless: /bin/true copied into a memfd and executed from it (the memfd's exec, in this pid)
        "8a6f2b7e-1c3d-4e59-b0a2-7f64c9d8e302": [sys.executable, "-c", "import os; fd = os.memfd_create('payload'); "
                                                 "os.write(fd, open('/bin/true', 'rb').read()); "
                                                 "os.execve(fd, ['payload'], {})"],
    }
    pids = {}
    for rid, cmd in behaviours.items():
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        p.wait()
        pids[rid] = p.pid
    benign = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in (["ls", "/"], ["echo", "hello"],
                                                                        ["cat", "/etc/hostname"])]
    for p in benign:
        p.wait()
    assert s.stop() == 0
    alerts = s.events(event__kind="alert", event__module="sigma")  # not the stop signal's tamper alert
    fired = {(a["rule"]["id"], a["process"]["pid"]) for a in alerts}
    for rid, pid in pids.items():
        assert (rid, pid) in fired, f"rule {rid} did not fire for pid {pid}"
    assert not [a for a in alerts if a["process"]["pid"] in {p.pid for p in benign}]
    shared = {yaml.safe_load(f.read_text())["id"]: yaml.safe_load(f.read_text())["author"] for f in SIGMA.rglob("*.yml")}
    for a in alerts:
        if a["rule"]["id"] in shared:
            assert a["rule"]["author"] == shared[a["rule"]["id"]]
        trigger = [e for e in s.events() if e["event"]["id"] == a["sensor"]["trigger"]["id"]]
        assert trigger and trigger[0]["process"]["entity_id"] == a["process"]["entity_id"]
    # the same rules over the stored events find the same alerts
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "test", str(SIGMA),
                        str(ROOT / "sensor" / "data" / "rules"), "--events", str(s.data_dir)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    replayed = {(json.loads(line)["rule"]["id"], json.loads(line)["process"]["pid"]) for line in r.stdout.splitlines()}
    assert replayed == fired


def _bad_rules(d: Path) -> dict[str, str]:
    """One rule file per way a user's rule can be wrong -> what the error must say."""
    d.mkdir(exist_ok=True)
    (d / "broken.yml").write_text("title: broken\ndetection: [unclosed\n")
    rule_file(d, "badmod", {"sel": {"CommandLine|nosuchmodifier": "x"}, "condition": "sel"})
    rule_file(d, "nofield", {"sel": {"Hashes|contains": "MD5="}, "condition": "sel"})
    rule_file(d, "undefined", {"sel": {"CommandLine": "x"}, "condition": "sel and nothere"})
    return {"broken": "invalid YAML at line 3", "badmod": "nosuchmodifier", "nofield": "Hashes",
            "undefined": "nothere"}


def test_invalid_rule_refuses_to_start(tmp_path):
    for name, reason in _bad_rules(tmp_path / "bad").items():
        path = tmp_path / "bad" / f"{name}.yml"
        # --duration: a sensor that wrongly starts ends by itself
        r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path / "data"),
                            "--console", "off", "--no-metrics-enabled", "--duration", "1", "--rules", f"builtin,{path}"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        err = [line for line in r.stderr.splitlines() if line.startswith("sensor: error:")]
        assert len(err) == 1 and "Ctrl-C stops" not in r.stderr, r.stderr[-2000:]
        assert str(path) in err[0] and reason in err[0] and "--rules-skip-invalid" in err[0], err[0]
        assert f"rule '{'?' if name == 'broken' else name}'" in err[0], err[0]


def test_skip_invalid_starts_logs_and_counts(start_sensor, tmp_path):
    rules = tmp_path / "rules"
    bad = _bad_rules(rules)
    rule_file(rules, "echo_marker", {"sel": {"CommandLine|contains": "marker-3b1f"}, "condition": "sel"})
    win = rule_file(rules, "win", {"sel": {"Image|endswith": "\\cmd.exe"}, "condition": "sel"})
    win.write_text(win.read_text().replace("product: linux", "product: windows"))  # unsupported, not invalid
    s = start_sensor("--rules", str(rules), "--rules-skip-invalid", "--no-metrics-enabled")
    subprocess.run(["/bin/echo", "marker-3b1f"], stdout=subprocess.DEVNULL)
    assert s.stop() == 0
    assert [a["rule"]["name"] for a in s.events(event__kind="alert", event__module="sigma")] == ["echo_marker"]
    skipped = [line for line in s.stderr().splitlines() if "skipped invalid rule" in line]
    assert sorted(n for n in bad if any(f"{n}.yml" in line for line in skipped)) == sorted(bad), skipped
    health = s.events(event__dataset="sensor.health")
    assert health and health[-1]["sensor"]["health"]["final"]
    assert health[-1]["sensor"]["health"]["rules"] == {"loaded": 1, "unsupported": 1, "skipped_invalid": 4}


@needs_sigma
def test_rules_test_over_a_json_lines_file(tmp_path):
    """`sensor rules test` on a day's worth of stored events: the reference evaluator's alerts,
    in order, and its speed on the summary line; a line that is not JSON is named."""
    import random

    from test_rules_index import edge_events, host_events, literal_events

    paths = [SIGMA / "linux", ROOT / "sensor" / "data" / "rules"]
    rules = RuleSet.load(paths)
    rng = random.Random(3)
    pool = host_events() + literal_events(rules, rng, variants=3) + edge_events(rng)
    events = []
    for i in range(12_000):
        ev = json.loads(json.dumps(rng.choice(pool)))
        ev["event"]["id"] = f"e{i}"
        events.append(ev)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    want = [(r.id, ev["event"]["id"]) for ev in events for r in rules.match_all(ev)]
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "test", *map(str, paths),
                        "--events", str(tmp_path / "events.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [(a["rule"]["id"], a["sensor"]["trigger"]["id"]) for a in map(json.loads, r.stdout.splitlines())]
    assert got == want and len(want) > 500
    summary = r.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"sensor rules: {len(rules.rules)} rules over 12,000 events: {len(want):,} alerts; ")
    assert summary.endswith(" events/s") and int(summary.split("; ")[-1].split()[0].replace(",", "")) > 0
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("{not json\n")
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "test", *map(str, paths),
                        "--events", str(tmp_path / "events.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "events.jsonl:12001: not a JSON event" in r.stderr, r.stderr[-500:]
