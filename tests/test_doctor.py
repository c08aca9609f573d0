"""`sensor doctor` on this machine, checked against independent views of the same facts."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor import doctor
from conftest import ROOT, bpf_programs, wait_for


@pytest.fixture(scope="module")
def checks():
    before = bpf_programs()
    result = {c.name: c for c in doctor.run_checks()}
    # every probe is closed again: nothing of doctor's stays loaded
    wait_for(lambda: not {n for n in bpf_programs() - before if n.startswith("probe_")},
             what="doctor's probes to unload")
    return result


def lockdown() -> str:
    text = Path("/sys/kernel/security/lockdown").read_text()
    return text[text.index("[") + 1:text.index("]")]


def test_required_checks_pass_here(checks):
    for name in ("privileges", "kernel", "btf", "libbpf", "program tp_btf + ring buffer"):
        assert checks[name].ok, checks[name]
    assert checks["kernel"].detail.endswith(platform.release())
    assert doctor.exit_code(list(checks.values())) == 0


def test_fentry_and_lsm_verdicts_match_lockdown(checks):
    if not Path("/sys/kernel/security/lockdown").exists():
        pytest.skip("securityfs not mounted: lockdown unknown")
    for name in ("program fentry", "program lsm"):
        c = checks[name]
        if lockdown() in ("integrity", "confidentiality"):
            assert not c.ok and "Operation not permitted" in c.detail and c.fix, c
        else:
            assert c.ok or c.fix, c
    mode = doctor.mode_of(list(checks.values()))
    assert mode == ("lsm" if checks["program lsm"].ok else "send_signal")


def test_tracepoints_agree_with_tracefs(checks):
    for tp in doctor.TRACEPOINTS:
        c = checks[f"tracepoint {tp.replace('/', ':')}"]
        assert c.ok == os.path.isdir(f"/sys/kernel/tracing/events/{tp}")


def test_cli_json_and_text():
    r = subprocess.run([sys.executable, "-m", "sensor", "doctor", "--json"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["mode"] in ("lsm", "send_signal")
    assert {"name", "ok", "required", "detail", "fix"} <= set(report["checks"][0])
    text = subprocess.run([sys.executable, "-m", "sensor", "doctor"], capture_output=True, text=True, cwd=ROOT)
    assert "the sensor can run" in text.stdout and "program fentry" in text.stdout


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is needed to drop privileges")
def test_unprivileged_user_is_told_what_to_do():
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "sensor", "doctor", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    report = json.loads(r.stdout)
    priv = next(c for c in report["checks"] if c["name"] == "privileges")
    assert not priv["ok"] and "CAP_BPF" in priv["fix"]
    assert report["ok"] is False
