"""Process inventory (host.processes), checked against /proc and real processes that change."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sensor.host import NS_PER_TICK, Host
from sensor.inventory import ProcessInventory
from sensor.schema import parse_time

from conftest import wait_for

MiB = 1 << 20
# A process that changes on request: "io N" moves N bytes, "mem N" grows its RSS by N bytes,
# "user" drops root for nobody; it answers "ok" when done.
WORKER = r"""
import os, sys
hoard = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "io":
        with open(os.devnull, "wb") as f:
            for _ in range(int(arg) // 65536):
                f.write(b"x" * 65536)
    elif cmd == "mem":
        hoard.append(bytearray(b"\1" * int(arg)))
    elif cmd == "user":
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    print("ok", flush=True)
"""


def proc_status(pid: int, key: str) -> list[str]:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return line.split()[1:]
    raise KeyError(key)


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


@pytest.fixture
def spawn():
    """spawn(argv, **popen) -> Popen; every process started is killed at teardown."""
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdin, p.stdout):
            if f:
                f.close()


@pytest.fixture
def worker(spawn):
    p = spawn([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(cmd: str):
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ok"

    p.ask = ask
    ask("noop")  # running its own image, past the interpreter's start-up
    return p


def of(events, pid, action=None):
    return [e for e in events if e["process"]["pid"] == pid and (action is None or e["event"]["action"] == action)]


def test_snapshot_matches_proc(worker):
    inv = ProcessInventory(interval=60).start()
    snap = inv.poll()
    assert {e["event"]["action"] for e in snap} == {"snapshot"}
    assert {e["event"]["kind"] for e in snap} == {"state"}
    pids = {e["process"]["pid"] for e in snap}
    running = {int(d) for d in os.listdir("/proc") if d.isdigit()}
    assert {os.getpid(), worker.pid, 1} <= pids <= running | pids  # (some may have ended since)
    ev = of(snap, worker.pid)[0]
    p, host = ev["process"], Host()
    assert p["executable"] == os.readlink(f"/proc/{worker.pid}/exe")
    assert p["name"] == proc_status(worker.pid, "Name")[0]
    assert p["parent"]["pid"] == int(stat_fields(worker.pid)[1]) == os.getpid()
    ticks = int(stat_fields(worker.pid)[19])
    assert p["entity_id"] == host.entity_id(worker.pid, ticks * NS_PER_TICK)
    assert p["parent"]["entity_id"] == of(snap, os.getpid())[0]["process"]["entity_id"]
    assert ev["user"] == {"id": str(os.geteuid()), "name": "root"} == p["user"]
    io = dict(line.split(": ") for line in open(f"/proc/{worker.pid}/io").read().splitlines())
    assert p["io"]["read_bytes"] == int(io["read_bytes"]) and p["io"]["write_count"] == int(io["syscw"])
    assert abs(p["memory"]["rss"] - int(proc_status(worker.pid, "VmRSS")[0]) * 1024) < 4 * MiB
    assert p["memory"]["vms"] == int(proc_status(worker.pid, "VmSize")[0]) * 1024


def test_changes_are_reported_once_with_before_and_after(worker):
    inv = ProcessInventory(interval=60, io_threshold=8 * MiB, memory_threshold=32 * MiB).start()
    inv.poll()
    assert of(inv.scan(), worker.pid) == []  # nothing happened: nothing said

    worker.ask(f"io {16 * MiB}")
    [ev] = of(inv.scan(), worker.pid)
    assert ev["event"]["action"] == "io-growth" and ev["event"]["type"] == ["change"]
    grown = ev["process"]["io"]["write_chars"] - ev["process"]["previous"]["io"]["write_chars"]
    assert 16 * MiB <= grown < 17 * MiB
    io = dict(line.split(": ") for line in open(f"/proc/{worker.pid}/io").read().splitlines())
    assert ev["process"]["io"]["write_chars"] == int(io["wchar"])
    worker.ask(f"io {4 * MiB}")
    assert of(inv.scan(), worker.pid) == []  # under the threshold since the last report

    worker.ask(f"mem {48 * MiB}")
    [ev] = of(inv.scan(), worker.pid)
    assert ev["event"]["action"] == "memory-growth"
    assert ev["process"]["memory"]["rss"] - ev["process"]["previous"]["memory"]["rss"] >= 48 * MiB
    assert abs(ev["process"]["memory"]["rss"] - int(proc_status(worker.pid, "VmRSS")[0]) * 1024) < 4 * MiB

    worker.ask("user")
    [ev] = of(inv.scan(), worker.pid)
    assert ev["event"]["action"] == "user-change"
    assert proc_status(worker.pid, "Uid")[1] == "65534"  # the kernel's effective uid
    assert ev["user"] == {"id": "65534", "name": "nobody"} == ev["process"]["user"]
    assert ev["process"]["previous"]["user"] == {"id": "0", "name": "root"}
    assert of(inv.scan(), worker.pid) == []


def test_deleted_executable_and_baseline_follows_processes(tmp_path, spawn):
    exe = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", exe)
    sleeper = spawn([str(exe), "60"])
    wait_for(lambda: os.readlink(f"/proc/{sleeper.pid}/exe") == str(exe), what="the copy to run")
    inv = ProcessInventory(interval=60).start()
    inv.poll()
    assert sleeper.pid in inv.seen
    exe.unlink()
    assert os.readlink(f"/proc/{sleeper.pid}/exe") == f"{exe} (deleted)"  # the kernel's own word
    [ev] = of(inv.scan(), sleeper.pid)
    assert ev["event"]["action"] == "executable-changed" and ev["event"]["reason"] == "deleted"
    assert ev["process"]["executable"] == str(exe) and ev["process"]["executable_deleted"] is True
    assert ev["file"] == {"path": str(exe)}
    assert of(inv.scan(), sleeper.pid) == []  # said once

    later = spawn(["/bin/sleep", "60"])
    sleeper.kill()
    sleeper.wait()
    events = inv.scan()
    assert of(events, later.pid) == []  # starts are the process source's news, not ours
    assert later.pid in inv.seen and sleeper.pid not in inv.seen


def test_scan_cost():
    """A scan every interval must stay cheap: measured here, reported in health as scan_ms."""
    inv = ProcessInventory(interval=60).start()
    inv.poll()
    costs = []
    for _ in range(5):
        t = time.perf_counter()
        inv.scan()
        costs.append((time.perf_counter() - t) * 1000)
    per_process = min(costs) / len(inv.seen)
    print(f"scan of {len(inv.seen)} processes: {min(costs):.1f} ms (median {sorted(costs)[2]:.1f}), "
          f"{per_process * 1000:.0f} us per process")
    assert inv.stats()["scan_ms"] > 0 and per_process < 2.0


def test_sensor_reports_inventory_snapshots(start_sensor):
    """The real sensor, without kernel process events: the inventory still runs, and services
    fall back to init scripts with a warning where systemd is not PID 1 (as in this container)."""
    s = start_sensor("--no-process-enabled", "--no-metrics-enabled", "--rules", "none",
                     "--inventory-interval", "0.5")
    wait_for(lambda: s.events(event__dataset="host.processes"), timeout=20, what="the process snapshot")
    wait_for(lambda: any(h["sensor"]["health"]["sources"]["host.processes"]["scan_ms"] > 0
                         for h in s.events(event__dataset="sensor.health")), timeout=20, what="an interval scan")
    sensor_pid = s.pid
    assert s.stop() == 0
    snap = s.events(event__dataset="host.processes", event__action="snapshot")
    pids = {e["process"]["pid"] for e in snap}
    assert {sensor_pid, os.getpid(), 1} <= pids
    assert all(e["event"]["kind"] == "state" and e["event"]["module"] == "psutil" for e in snap)
    assert all(e["host"]["boot"]["id"] and e["@timestamp"] for e in snap)
    services = s.events(event__dataset="host.services")
    if not os.path.isdir("/run/systemd/system"):
        assert "systemd is not PID 1" in s.stderr()
        assert {e["event"]["module"] for e in services} <= {"sysv"}
    health = [e for e in s.events(event__dataset="sensor.health")][-1]["sensor"]["health"]
    assert health["sources"]["host.processes"]["emitted"] == len(s.events(event__dataset="host.processes"))
    assert health["sources"]["host.processes"]["scan_ms"] > 0


def test_snapshot_entity_ids_agree_with_kernel_events(start_sensor, spawn):
    """A process running before the sensor: its snapshot entity id is the one its kernel exit carries."""
    sleeper = spawn(["/bin/sleep", "60"])
    s = start_sensor("--no-metrics-enabled", "--rules", "none", "--no-services-enabled", "--no-logins-enabled")
    snap = wait_for(lambda: [e for e in s.events(event__dataset="host.processes") if e["process"]["pid"] == sleeper.pid],
                    timeout=20, what="the sleeper in the snapshot")
    sleeper.send_signal(signal.SIGTERM)
    sleeper.wait()
    wait_for(lambda: [e for e in s.events(event__dataset="process", event__action="exit")
                      if e["process"]["pid"] == sleeper.pid], timeout=20, what="the exit event")
    assert s.stop() == 0
    [end] = [e for e in s.events(event__dataset="process", event__action="exit") if e["process"]["pid"] == sleeper.pid]
    assert end["process"]["entity_id"] == snap[0]["process"]["entity_id"]
    # /proc knows the start to the tick (10 ms); the kernel to the nanosecond
    assert abs(parse_time(end["process"]["start"]) - parse_time(snap[0]["process"]["start"])) <= NS_PER_TICK


GROWER = """
import sys, time
sys.stdin.readline()                 # started: wait for the go
block = bytearray(80 << 20)          # grow by 80 MiB, touched
for i in range(0, len(block), 4096):
    block[i] = 1
print("grown", flush=True)
sys.stdin.readline()                 # then exit when told
"""


def test_a_process_that_starts_grows_and_exits(start_sensor):
    """The whole life of one process in the real sensor: start and exit from the kernel's process
    events, the growth in between from the inventory, all under one entity id."""
    s = start_sensor("--inventory-interval", "0.3", "--inventory-memory-threshold", "32MiB",
                     "--no-files-enabled", "--no-network-enabled", "--no-security-enabled", "--rules", "none")
    p = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # in the inventory's baseline before it grows (5 scans, room for a loaded machine)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "grown"
    wait_for(lambda: [e for e in s.events(event__dataset="host.processes", event__action="memory-growth")
                      if e["process"]["pid"] == p.pid], timeout=15, what="the memory-growth event")
    p.stdin.write("exit\n")
    p.stdin.flush()
    assert p.wait(10) == 0
    wait_for(lambda: [e for e in s.events(event__dataset="process", event__action="exit")
                      if e["process"]["pid"] == p.pid], what="the exit event")
    assert s.stop() == 0
    life = [e for e in s.events() if e.get("process", {}).get("pid") == p.pid
            and e["event"]["dataset"] in ("process", "host.processes")]
    actions = [e["event"]["action"] for e in life]
    assert actions[0] == "fork" and "exec" in actions and actions[-1] == "exit"
    assert actions.count("memory-growth") == 1
    [growth] = [e for e in life if e["event"]["action"] == "memory-growth"]
    assert len({e["process"]["entity_id"] for e in life if e["event"]["action"] != "fork"}) == 1
    assert growth["process"]["entity_id"] == life[-1]["process"]["entity_id"]
