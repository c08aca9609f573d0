"""block-exec stops scripts on the real kernel: in every form a blocked script is run, it never runs
its first line (the side effect it makes there never happens), and a denied exec event names it."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import Sensor, wait_for

SH_FORMS = ("absolute", "relative", "symlink", "sh", "bash")
MORE_FORMS = ("dot", "stdin")  # sourced by a running shell; fed on stdin (the shell opens it)


def sh_script(path, marker):
    path.write_text(f"#!/bin/sh\n: > {marker}\necho ran\n")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def blocking(tmp_path_factory):
    """One sensor for the forms: a script per form, each with its own marker, all blocked."""
    d = tmp_path_factory.mktemp("scripts")
    scripts = {}
    for form in SH_FORMS + MORE_FORMS:
        scripts[form] = d / f"tool-{form}"
        sh_script(scripts[form], d / f"marker-{form}")
    scripts["python3"] = d / "tool-python3.py"
    scripts["python3"].write_text(f"open({str(d / 'marker-python3')!r}, 'w')\nprint('ran')\n")
    scripts["piped"] = d / "tool-piped"
    sh_script(scripts["piped"], d / "marker-piped")
    os.symlink(scripts["symlink"], d / "link")
    sh_script(d / "allowed", d / "marker-allowed")  # same kind of script, not listed
    scripts["binary"] = d / "tool-binary"
    shutil.copy("/usr/bin/touch", scripts["binary"])
    policy = d / "policy.yaml"
    policy.write_text(yaml.safe_dump([{"action": "block-exec", "executables": [str(p) for p in scripts.values()]}]))
    s = Sensor(d / "data", "--health-interval", "1", "--response-policy", str(policy), "--rules", "none")
    try:
        yield s, d, scripts
    finally:
        s.kill()


def command(form, d, script):
    return {"absolute": [str(script)], "relative": [f"./{script.name}"], "symlink": [str(d / "link")],
            "sh": ["sh", str(script)], "bash": ["bash", str(script)], "python3": ["python3", str(script)],
            "dot": ["bash", "-c", f". {script}; echo ran"], "stdin": ["sh", "-c", f"sh < {script}; echo ran"]}[form]


def denied(s, script, **where):
    """The denied exec events that name `script`."""
    return [e for e in s.events(event__action="exec", sensor__blocked=True, **where)
            if (e.get("file") or {}).get("path") == str(script)]


@pytest.mark.parametrize("form", SH_FORMS + ("python3",))
def test_a_blocked_script_never_runs_its_first_line(blocking, form):
    s, d, scripts = blocking
    p = subprocess.Popen(command(form, d, scripts[form]), cwd=d, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == -9, (form, p.returncode, out)
    assert not (d / f"marker-{form}").exists() and out == b""
    (ev,) = wait_for(lambda: denied(s, scripts[form], process__pid=p.pid), what=f"the denied exec ({form})")
    assert ev["event"]["type"] == ["start", "denied"] and ev["event"]["outcome"] == "failure"
    assert ev["process"]["args"][-1].endswith(scripts[form].name if form != "symlink" else "link")


@pytest.mark.parametrize("form", MORE_FORMS)
def test_a_blocked_script_read_by_a_running_shell_never_runs(blocking, form):
    s, d, scripts = blocking
    p = subprocess.Popen(command(form, d, scripts[form]), cwd=d, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=20)
    # the shell that opens it dies; for `sh < FILE` that is the child forked for the redirection
    assert p.returncode in (-9, 128 + 9) and out == b"", (form, p.returncode, out)
    assert not (d / f"marker-{form}").exists()
    wait_for(lambda: denied(s, scripts[form]), what=f"the denied exec ({form})")


def test_a_blocked_binary_never_execs_and_stays_readable(blocking):
    """A binary is stopped at its exec only: reading it (hashing, backups, package checks) goes on."""
    s, d, scripts = blocking
    assert subprocess.run([str(scripts["binary"]), str(d / "marker-binary")]).returncode == -9
    assert not (d / "marker-binary").exists()
    r = subprocess.run(["sha256sum", str(scripts["binary"])], capture_output=True)
    assert r.returncode == 0 and r.stdout.split()[0].decode() == hashlib.sha256(scripts["binary"].read_bytes()).hexdigest()
    (ev,) = wait_for(lambda: [e for e in s.events(event__action="exec", sensor__blocked=True)
                              if e["process"].get("executable") == str(scripts["binary"])], what="the denied exec")
    assert ev["event"]["type"] == ["start", "denied"]
    # the way round it is named at start: the dynamic loader reads a binary without an exec
    (line,) = [x for x in s.stderr().splitlines() if f"block-exec {scripts['binary']}: cannot block" in x]
    assert "dynamic loader" in line


def test_a_script_piped_into_a_shell_never_runs(blocking):
    """Reading a blocked file is stopping it: `cat FILE | sh` kills cat before it reads a byte."""
    s, d, scripts = blocking
    r = subprocess.run(["sh", "-c", f"cat {scripts['piped']} | sh"], cwd=d)
    assert r.returncode == 0 and not (d / "marker-piped").exists()  # sh read nothing
    (ev,) = wait_for(lambda: denied(s, scripts["piped"]), what="the denied read")
    assert ev["process"]["name"] == "cat"


def test_scripts_not_listed_still_run(blocking):
    s, d, _ = blocking
    r = subprocess.run([str(d / "allowed")], cwd=d, capture_output=True)
    assert r.returncode == 0 and r.stdout == b"ran\n" and (d / "marker-allowed").exists()
    assert subprocess.run(["sh", "-c", "exit 3"]).returncode == 3


def test_scripts_are_blocked_with_the_activity_sources_off(start_sensor, tmp_path):
    """The open check runs even when no file, network or security events are asked for."""
    tool = tmp_path / "tool"
    sh_script(tool, tmp_path / "marker")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump([{"action": "block-exec", "executables": [str(tool)]}]))
    s = start_sensor("--response-policy", str(policy), "--rules", "none", "--no-files-enabled",
                     "--no-network-enabled", "--no-security-enabled")
    assert subprocess.run([str(tool)]).returncode == -9
    assert subprocess.run(["sh", str(tool)]).returncode == -9
    assert not (tmp_path / "marker").exists()
    wait_for(lambda: len(denied(s, tool)) == 2, what="two denied execs")


def test_what_cannot_be_blocked_is_named_at_start(start_sensor, tmp_path):
    """A process that opened a blocked file before the sensor started reads on through its
    descriptor: no open happens that the kernel programs could stop. The start log says so."""
    tool = tmp_path / "tool"
    sh_script(tool, tmp_path / "marker")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump([{"action": "block-exec", "executables": [str(tool)]}]))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); "
                               "print(flush=True); time.sleep(60)", str(tool)], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        s = start_sensor("--response-policy", str(policy), "--rules", "none")
        lines = [line for line in s.stderr().splitlines() if str(tool) in line]
        assert any(f"pid {holder.pid}" in line and "cannot" in line for line in lines), s.stderr()
        assert holder.poll() is None  # not killed: it opened the file before the block
    finally:
        holder.kill()
        holder.wait()
