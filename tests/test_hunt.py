"""`sensor hunt` end to end, as a user runs it: SigmaHQ rules over recorded .evtx files (the evtx
crate's samples) and over a sensor's stored events; damaged files are named, the rest is hunted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DATA = Path(__file__).parent / "data"
EVTX, RULES = DATA / "evtx", DATA / "sigma"
SIGMA = ROOT.parent / "shared" / "sigma" / "rules" / "windows"


def hunt(*args):
    p = subprocess.run([sys.executable, "-m", "sensor", "hunt", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines()], p.stderr


def summary(stderr: str) -> dict:
    return next(json.loads(line)["summary"] for line in stderr.splitlines() if line.startswith('{"summary"'))


def test_sigma_rules_fire_on_recorded_logs_with_their_source():
    rc, alerts, err = hunt(EVTX / "sysmon-first-4-chunks.evtx", EVTX / "system-first-3-chunks.evtx",
                           EVTX / "new-user-security.evtx", EVTX / "Security_short_selected.evtx",
                           "--rules", RULES, "--json")
    assert rc == 0, err
    got = sorted((Path(a["log"]["file"]["path"]).name, a["winlog"]["record_id"], a["rule"]["title"]) for a in alerts)
    assert got == [
        ("Security_short_selected.evtx", 4, "Failed Logon From Public IP"),
        ("new-user-security.evtx", 2, "Local User Creation"),
        ("sysmon-first-4-chunks.evtx", 1802, "Sysmon Configuration Update"),
        ("sysmon-first-4-chunks.evtx", 1803, "Sysmon Configuration Change"),
        ("sysmon-first-4-chunks.evtx", 1869, "Suspicious Shell Open Command Registry Modification"),
        ("system-first-3-chunks.evtx", 40, "Windows Service Terminated With Error"),
        ("system-first-3-chunks.evtx", 42, "Windows Service Terminated With Error"),
    ]
    a = next(a for a in alerts if a["winlog"]["record_id"] == 1802)
    assert a["event"]["kind"] == "alert" and a["rule"]["level"] == "medium"
    assert a["rule"]["id"] == "87911521-7098-470b-a459-9a57fc80bdfd" and "Nextron" in a["rule"]["author"]
    assert a["winlog"] == {"channel": "Microsoft-Windows-Sysmon/Operational", "event_id": 1, "record_id": 1802,
                           "provider_name": "Microsoft-Windows-Sysmon", "computer_name": "DESKTOP-2KGM189"}
    matched = a["sensor"]["trigger"]["event"]  # the event the rule matched, as the mappers made it
    assert matched["process"]["command_line"] == "Sysmon64.exe  -c sysmon.workstations.cfg"
    assert matched["process"]["name"] == "Sysmon64.exe" and matched["event"]["module"] == "sysmon"
    reg = next(a for a in alerts if a["winlog"]["record_id"] == 1869)["sensor"]["trigger"]["event"]
    assert reg["registry"]["path"].startswith("HKU\\") and reg["event"]["action"] == "set-value"
    s = summary(err)
    assert s["files"] == 4 and s["records"] == 163 + 326 + 4 + 7 and s["alerts"] == 7
    assert s["alerts_per_rule"]["Windows Service Terminated With Error (acfa2210-0d71-4eeb-b477-afab494d596c)"] == 2


def test_a_bad_chunk_is_named_and_the_rest_is_hunted(tmp_path):
    rc, _, err = hunt(EVTX / "bad-chunk-magic-first-8-chunks.evtx", EVTX / "new-user-security.evtx",
                      "--rules", RULES, "--json")
    assert rc == 1  # the exit status says something was damaged
    s = summary(err)
    assert len(s["damaged"]) == 1 and "bad-chunk-magic-first-8-chunks.evtx: chunk 6: " in s["damaged"][0]
    assert "chunk header magic" in s["damaged"][0]
    assert s["records"] == 27 + 4  # chunk 0 and chunk 7, after the bad one, and the next file
    assert s["alerts"] == 1


def test_a_file_cut_in_the_middle_keeps_its_whole_chunks(tmp_path):
    cut = tmp_path / "cut.evtx"
    data = (EVTX / "sysmon-first-4-chunks.evtx").read_bytes()
    cut.write_bytes(data[:4096 + 3 * 65536 + 30000])  # chunk 3 ends half way
    notes = tmp_path / "notes.evtx"
    notes.write_text("not an event log\n")
    rc, alerts, err = hunt(cut, notes, "--rules", RULES, "--json")
    assert rc == 1
    s = summary(err)
    assert any(d.startswith(f"{cut}: chunk 3: ") for d in s["damaged"]), s["damaged"]
    assert any(d.startswith(f"{notes}: file: ") for d in s["damaged"]), s["damaged"]
    assert 0 < s["records"] < 163
    assert {a["winlog"]["record_id"] for a in alerts} >= {1802, 1803}  # found before the cut
    plain = subprocess.run([sys.executable, "-m", "sensor", "hunt", str(cut), "--rules", str(RULES)],
                           capture_output=True, text=True, cwd=ROOT)
    assert f"sensor hunt: damaged: {cut}: chunk 3: " in plain.stderr and "Sysmon Configuration Update" in plain.stdout


def test_retro_hunt_of_stored_events_finds_what_the_log_gave(tmp_path):
    """The mapped events, stored by the sensor's own store, give the same alerts again."""
    from sensor.hunt import Hunt
    from sensor.store import Store
    from sensor.windows.sigma import load_rules

    h = Hunt(load_rules([RULES]))
    first = [(a["winlog"]["record_id"], a["rule"]["id"]) for a in h.evtx(EVTX / "sysmon-first-4-chunks.evtx")]
    store, stored = Store(tmp_path / "data"), list(h.normalized(EVTX / "sysmon-first-4-chunks.evtx"))
    for ev in stored:
        store.write(ev)
    store.close()
    rc, alerts, err = hunt(tmp_path / "data", "--rules", RULES, "--json")
    assert rc == 0, err
    assert sorted((a["winlog"]["record_id"], a["rule"]["id"]) for a in alerts) == sorted(first)
    assert summary(err)["records"] == len(stored)


def test_rules_check_loads_the_windows_rules(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", str(RULES), "--json"], capture_output=True,
                       text=True, cwd=ROOT)
    reports = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(reports) == 8 and {r["status"] for r in reports} == {"ok"}, reports


@pytest.mark.skipif(not SIGMA.is_dir(), reason=f"SigmaHQ Windows rules not found at {SIGMA}")
def test_nine_in_ten_sigmahq_process_creation_rules_load():
    from sensor.windows.sigma import load_rules

    rules = load_rules([SIGMA / "process_creation"])
    ok = sum(r.status == "ok" for r in rules.reports)
    assert len(rules.reports) > 1000 and ok >= 0.9 * len(rules.reports), (ok, len(rules.reports))


def test_a_service_rule_meets_only_its_channels_records():
    """System's rules match System records; the same event id and fields from another channel
    (Security) or from no Event Log at all meet none of them."""
    from sensor.windows.sigma import load_rules

    rules = load_rules([RULES / "rules" / "windows" / "builtin" / "system"])
    record = {"event": {"kind": "event", "dataset": "winlog", "code": "7023"},
              "winlog": {"channel": "System", "event_id": 7023, "provider_name": "Service Control Manager",
                         "event_data": {"param1": "x", "param2": "y"}}}
    assert [r.title for r in rules.match(record)] == ["Windows Service Terminated With Error"]
    assert rules.match({**record, "winlog": {**record["winlog"], "channel": "Security"}}) == []
    assert rules.match({"event": record["event"]}) == []
