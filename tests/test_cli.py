"""The `sensor` command as users call it: config errors, events queries, doctor."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sensor import config
from sensor.errors import ConfigError
from sensor.schema import parse_time
from conftest import ROOT, wait_for


def sensor(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kw)


def test_bad_config_names_file_line_and_reason(tmp_path):
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text("data_dir: /tmp/x\nstore:\n  segment_bytes: lots\n")
    r = sensor("run", "--config", str(cfg), "--duration", "1")
    assert r.returncode != 0
    assert f"{cfg}:3" in r.stderr and "segment_bytes" in r.stderr and "not a size" in r.stderr

    cfg.write_text("health_interval: 5\nproces:\n  threads: true\n")
    r = sensor("run", "--config", str(cfg))
    assert r.returncode != 0 and f"{cfg}:2: unknown option 'proces'" in r.stderr

    cfg.write_text("store: [unclosed\n")
    r = sensor("run", "--config", str(cfg))
    assert r.returncode != 0 and "invalid YAML" in r.stderr and str(cfg) in r.stderr


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("health_interval: 3\nstore:\n  segment_bytes: 2MiB\nprocess:\n  threads: true\n")
    parser = __import__("argparse").ArgumentParser()
    parser.add_argument("--config")
    config.add_flags(parser)
    c = config.resolve(parser.parse_args(["--config", str(cfg), "--store-segment-bytes", "1KiB",
                                          "--no-process-threads"]))
    assert c["health_interval"] == 3.0
    assert c["store.segment_bytes"] == 1024
    assert c["process.threads"] is False
    assert c.section("store")["segment_bytes"] == 1024
    with pytest.raises(ConfigError, match="--health-interval"):
        config.resolve(parser.parse_args(["--health-interval", "soon"]))
    with pytest.raises(ConfigError, match="one of auto, on, off"):
        config.resolve(parser.parse_args(["--console", "maybe"]))


def test_events_where_since_across_compressed_and_open_segments(start_sensor):
    # rotating every second (tiny segments by size made a loaded sensor compress and fsync every
    # few events, and fall behind)
    s = start_sensor("--store-segment-seconds", "1", "--store-flush-interval", "0.2")
    subprocess.run(["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do /bin/true; done"])
    marker = "cli-marker-7f3a"
    subprocess.run(["/bin/echo", marker], stdout=subprocess.DEVNULL)
    # while running: closed .zst segments plus the open .jsonl one
    from conftest import wait_for

    wait_for(lambda: list(s.data_dir.glob("events/*.zst")) and list(s.data_dir.glob("events/*.jsonl")),
             what="compressed and open segments")

    def query(*args):
        r = sensor("events", "--data-dir", str(s.data_dir), *args)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    wait_for(lambda: query("--where", "process.args=" + marker), what="the marker to be flushed")
    everything = query()
    seqs = [e["event"]["sequence"] for e in everything]
    assert seqs == sorted(seqs) and len(everything) > 40
    hits = query("--where", "event.action=exec", "--where", "process.args=" + marker)
    assert len(hits) == 1 and hits[0]["process"]["args"] == ["/bin/echo", marker]
    assert query("--where", "event.action=exec", "--where", "process.name=no-such-name") == []
    last = everything[-1]["event"]["sequence"]

    def upto_last(events):
        return [e for e in events if e["event"]["sequence"] <= last]

    assert upto_last(query("--since", "1h")) == everything
    # the middle of the distinct times, not of the sequence: kernel events queued while the
    # start-up snapshot was stored come after it but are stamped before it
    stamps = sorted({e["@timestamp"] for e in everything}, key=parse_time)
    mid = stamps[len(stamps) // 2]
    expected = [e for e in everything if parse_time(e["@timestamp"]) >= parse_time(mid)]
    assert 0 < len(expected) < len(everything)
    assert upto_last(query("--since", mid)) == expected
    assert query("--since", str(time.time() + 3600)) == []
    s.stop()
    assert len(query()) >= len(everything)
    r = sensor("events", "--data-dir", str(s.data_dir), "--where", "nofield")
    assert r.returncode != 0 and "FIELD=VALUE" in r.stderr


def test_doctor_reports_and_exits_zero_here():
    r = sensor("doctor", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert any("btf" in n for n in names)


def test_duration_stops_by_itself_and_sigint_stops_cleanly(tmp_path):
    from sensor.store import read_events

    r = sensor("run", "--data-dir", str(tmp_path / "a"), "--console", "off", "--duration", "1.5",
               "--health-interval", "0.5")
    assert r.returncode == 0, r.stderr
    health = [e for e in read_events(tmp_path / "a") if e["event"]["dataset"] == "sensor.health"]
    assert len(health) >= 2 and health[-1]["sensor"]["health"]["final"] is True
    assert 1.4 <= health[-1]["sensor"]["health"]["uptime_s"] < 10

    from conftest import Sensor

    s = Sensor(tmp_path / "b")
    s.proc.send_signal(__import__("signal").SIGINT)
    assert s.proc.wait(30) == 0
    s.kill()
    assert s.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["final"] is True


def test_unusable_data_dir_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = sensor("run", "--data-dir", str(blocker / "data"), "--console", "off", "--duration", "1")
    assert r.returncode == 2
    assert r.stderr.startswith("sensor: error: cannot use data dir") and "Traceback" not in r.stderr


def test_backend_psutil_loads_no_ebpf(start_sensor, tmp_path):
    """`--backend psutil`: the portable backends only, as on a host where eBPF cannot load."""
    s = start_sensor("--backend", "psutil", "--files-paths", str(tmp_path), "--process-poll-interval", "0.2",
                     "--rules", "none")
    progs = [l for fd in os.listdir(f"/proc/{s.pid}/fdinfo")
             for l in open(f"/proc/{s.pid}/fdinfo/{fd}") if l.startswith("prog_type")]
    assert progs == []  # not one eBPF program loaded
    sleeper = subprocess.Popen(["sleep", "1.5"])
    (tmp_path / "made.txt").write_text("x")
    sleeper.wait()
    wait_for(lambda: s.events(event__dataset="file") and [e for e in s.events(event__dataset="process")
                                                            if e["process"]["pid"] == sleeper.pid],
             what="polled process and watchdog file events")
    assert s.stop() == 0
    health = s.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["sources"]
    assert "network" not in health and "security" not in health
    assert {e["event"]["module"] for e in s.events(event__dataset="process")} == {"psutil"}
    assert {e["event"]["module"] for e in s.events(event__dataset="file")} == {"watchdog"}


@pytest.mark.parametrize("command", ["run", "trace"])
def test_a_burst_of_signals_still_stops_cleanly(tmp_path, command):
    """Signals that arrive while the handler is still handling the last one (seen: timeout
    forwarding a SIGINT that pkill had sent too) must not deadlock the stop, and the rest of the
    burst, kept up until the process is gone, must not end it by the signal once it stopped."""
    import signal

    if command == "run":
        argv = ["run", "--data-dir", str(tmp_path / "d"), "--console", "off", "--rules", "none"]
        ready = "Ctrl-C stops"
    else:
        argv = ["trace", "-o", str(tmp_path / "t"), "--", "/bin/sh", "-c", "exec sleep 30 </dev/null >/dev/null 2>&1"]
        ready = "tracing pids"
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        p = subprocess.Popen([sys.executable, "-m", "sensor", *argv], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        wait_for(lambda: ready in log.read_text(errors="replace"), timeout=30, what="the sensor to start")
        start = time.monotonic()
        while time.monotonic() < start + 30 and p.poll() is None:
            # a flood for half a second, then one every few ms until the process is gone
            for _ in range(200 if time.monotonic() < start + 0.5 else 1):
                try:
                    os.kill(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    break
            if time.monotonic() >= start + 0.5:
                time.sleep(0.003)
        assert p.wait(5) in (0, 128 + signal.SIGINT), log.read_text(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if command == "trace":  # the traced command is left running, as strace leaves it
            import re

            m = re.search(r"tracing pids (\d+)", log.read_text(errors="replace"))
            if m:
                try:
                    os.kill(int(m.group(1)), signal.SIGKILL)
                except ProcessLookupError:
                    pass
