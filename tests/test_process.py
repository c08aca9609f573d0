"""Process events from the real kernel, checked against what the OS itself says."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sensor.schema import parse_time, unescape
from sensor.wire import ARGS_MAX

from conftest import wait_for


def start_ticks(pid: int) -> int:
    """The kernel's own start time of pid: /proc/PID/stat field 22, in USER_HZ ticks since boot."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def as_ticks(timestamp: str) -> float:
    """An event's RFC 3339 time as USER_HZ ticks since boot (CLOCK_BOOTTIME)."""
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return (parse_time(timestamp) - offset) / (1e9 / os.sysconf("SC_CLK_TCK"))


def of_pid(sensor, pid):
    return [e for e in sensor.events(event__dataset="process") if e["process"]["pid"] == pid]


def actions(events):
    return [e["event"]["action"] for e in events]


def test_exec_chain_parent_user_and_exit(start_sensor):
    s = start_sensor()
    marker = f"marker-{uuid.uuid4().hex}"
    child = subprocess.Popen(["/bin/sh", "-c", f"exec /bin/echo {marker}"], stdout=subprocess.PIPE)
    assert marker in child.communicate()[0].decode()
    assert s.stop() == 0

    evs = of_pid(s, child.pid)
    assert actions(evs) == ["fork", "exec", "exec", "exit"]
    fork, sh, echo, end = evs
    assert sh["process"]["args"] == ["/bin/sh", "-c", f"exec /bin/echo {marker}"]
    assert echo["process"]["args"] == ["/bin/echo", marker]
    assert echo["process"]["args_count"] == 2
    assert echo["process"]["command_line"] == f"/bin/echo {marker}"
    assert echo["process"]["executable"] == os.path.realpath("/bin/echo")
    assert echo["process"]["name"] == os.path.basename(os.path.realpath("/bin/echo"))
    assert echo["process"]["working_directory"] == os.getcwd()
    assert echo["user"]["id"] == str(os.geteuid())
    assert echo["process"]["user"]["id"] == str(os.geteuid())

    # one entity from fork to exit; its parent is this test process, as the OS knows it
    assert len({e["process"]["entity_id"] for e in evs}) == 1
    for e in evs:
        parent = e["process"]["parent"]
        assert parent["pid"] == os.getpid()
    assert len({e["process"]["parent"]["entity_id"] for e in evs}) == 1
    assert abs(as_ticks(echo["process"]["parent"]["start"]) - start_ticks(os.getpid())) <= 1
    assert as_ticks(echo["process"]["start"]) >= start_ticks(os.getpid())

    assert end["process"]["exit_code"] == 0
    assert end["event"]["type"] == ["end"]
    assert end["event"]["duration"] > 0
    seqs = [e["event"]["sequence"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert len({e["event"]["id"] for e in evs}) == 4


def test_exit_codes_and_signals(start_sensor):
    s = start_sensor()
    seven = subprocess.run(["/bin/sh", "-c", "exit 7"])
    killed = subprocess.run(["/bin/sh", "-c", "kill -KILL $$"])
    assert (seven.returncode, killed.returncode) == (7, -9)
    s.stop()
    (end7,) = [e for e in of_pid(s, _pid_of(s, "exit 7")) if e["event"]["action"] == "exit"]
    assert end7["process"]["exit_code"] == 7
    (end9,) = [e for e in of_pid(s, _pid_of(s, "kill -KILL $$")) if e["event"]["action"] == "exit"]
    assert end9["process"]["exit_code"] == 128 + 9
    assert end9["process"]["exit_signal"] == signal.SIGKILL


def _pid_of(sensor, command_fragment):
    (pid,) = {e["process"]["pid"] for e in sensor.events(event__action="exec")
              if command_fragment in e["process"]["command_line"]}
    return pid


def test_fork_without_exec(start_sensor):
    s = start_sensor()
    code = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(3)\nos.waitpid(pid, 0)\nprint(pid)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = int(out.stdout)
    s.stop()
    evs = of_pid(s, child)
    assert actions(evs) == ["fork", "exit"]
    fork, end = evs
    assert fork["process"]["executable"] == os.path.realpath(sys.executable)
    assert fork["process"]["parent"]["executable"] == os.path.realpath(sys.executable)
    assert end["process"]["exit_code"] == 3
    assert fork["process"]["entity_id"] == end["process"]["entity_id"]
    parent_execs = [e for e in s.events(event__action="exec") if e["process"]["pid"] == fork["process"]["parent"]["pid"]]
    assert parent_execs and parent_execs[0]["process"]["entity_id"] == fork["process"]["parent"]["entity_id"]


def test_process_started_before_sensor_has_entity(start_sensor):
    sleeper = subprocess.Popen(["sleep", "60"], cwd="/tmp")
    sleeper_ticks = start_ticks(sleeper.pid)
    try:
        s = start_sensor()
    finally:
        sleeper.kill()
        sleeper.wait()
    s.stop()
    (end,) = [e for e in of_pid(s, sleeper.pid) if e["event"]["action"] == "exit"]
    p = end["process"]
    assert abs(as_ticks(p["start"]) - sleeper_ticks) <= 1
    # known from the /proc snapshot, not from a kernel exec event
    assert p["args"] == ["sleep", "60"]
    assert p["executable"] == os.path.realpath("/usr/bin/sleep")
    assert p["working_directory"] == "/tmp"
    assert p["exit_code"] == 128 + signal.SIGKILL
    assert p["parent"]["pid"] == os.getpid()
    assert end["event"]["duration"] > 0


def test_hostile_argv_is_escaped_and_truncated(start_sensor, tmp_path):
    s = start_sensor()
    bad = b"\xff\xfe-not-utf8-\\-x"
    big = [b"A" * 65536] * 16  # 1 MiB of argv (one argument may be at most 128 KiB)
    argv = [b"/bin/echo", b"line one\nline two", bad, *big]
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    s.stop()

    # every stored line is strict JSON (the standard library parser, not ours)
    from sensor.store import segments
    import zstandard

    lines = 0
    for seg in segments(s.data_dir):
        raw = seg.read_bytes()
        if seg.name.endswith(".zst"):
            raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
        for line in raw.splitlines():
            json.loads(line)
            lines += 1
    assert lines > 0

    (ev,) = [e for e in s.events(event__action="exec") if e["process"]["args"][:1] == ["/bin/echo"]
             and len(e["process"]["args"]) > 2 and e["process"]["args"][1].startswith("line one")]
    p = ev["process"]
    assert p["args"][1] == "line one\nline two"
    assert unescape(p["args"][2]) == bad
    assert "process.args" in ev["sensor"]["escaped"]
    assert "process.args" in ev["sensor"]["truncated"]
    assert p["args_count"] == len(argv)
    assert len(p["args"]) < len(argv)
    assert sum(len(a) + 1 for a in p["args"]) <= ARGS_MAX + 64


def test_unprivileged_sensor_falls_back_to_polling(tmp_path):
    """Without root eBPF cannot load: the sensor says so and keeps running on psutil polling."""
    import shutil as _sh

    if not _sh.which("setpriv"):
        import pytest
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sensor-nobody-"))  # pytest's tmp dirs are root-only
    base.chmod(0o777)
    data = base / "data"
    sensor = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                               sys.executable, "-m", "sensor", "run", "--data-dir", str(data), "--console", "off",
                               "--rules", "none", "--no-metrics-enabled",
                               "--process-poll-interval", "0.2"],
                              stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    try:
        err = ""
        while "Ctrl-C stops" not in err:
            line = sensor.stderr.readline()
            assert line, f"sensor exited: {err}"
            err += line
        assert "falling back to psutil polling" in err
        sleeper = subprocess.Popen(["sleep", "1"])
        sleeper.wait()
        time.sleep(0.5)
        sensor.terminate()
        assert sensor.wait(30) == 0
        from sensor.store import read_events

        evs = [e for e in read_events(data) if e["event"]["dataset"] == "process" and e["process"]["pid"] == sleeper.pid]
    finally:
        if sensor.poll() is None:
            sensor.kill()
            sensor.wait()
        _sh.rmtree(base, ignore_errors=True)
    assert [e["event"]["action"] for e in evs] == ["exec", "exit"]
    assert all(e["event"]["module"] == "psutil" for e in evs)
    assert evs[0]["process"]["args"] == ["sleep", "1"]
    assert "exit_code" not in evs[1]["process"]  # a poller cannot know it
