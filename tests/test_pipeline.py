"""The running sensor as a whole: health counts, loss accounting, shutdown under load."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import zstandard

from conftest import ROOT, wait_for


def bpf_map_ids(pid: int) -> set[int]:
    """Ids of the BPF maps a process holds open, from the kernel's fdinfo."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids.update(int(line.split()[1]) for line in f if line.startswith("map_id:"))
        except OSError:
            continue
    return ids


def lost_in_kernel(sensor_pid: int) -> int:
    """The kernel's own count of failed reserves, read with bpftool from the sensor's `lost` map."""
    def bpftool(*args):
        return json.loads(subprocess.run(["bpftool", *args, "-j"], capture_output=True, text=True,
                                         check=True).stdout)

    (map_id,) = [i for i in bpf_map_ids(sensor_pid) if bpftool("map", "show", "id", str(i))["name"] == "lost"]
    total = 0
    for entry in bpftool("map", "dump", "id", str(map_id)):
        for v in entry.get("values", []):
            value = v["value"]
            total += value if isinstance(value, int) else int.from_bytes(bytes(int(b, 16) for b in value), "little")
    return total


def health_events(sensor):
    return sensor.events(event__dataset="sensor.health")


def test_ring_buffer_overflow_is_counted_exactly(start_sensor):
    # a 4 KiB ring holds about ten exec records; stop the reader and exec far more
    s = start_sensor("--process-ring-buffer-bytes", "4KiB", "--store-flush-interval", "0.2",
                     "--no-files-enabled", "--no-network-enabled", "--no-security-enabled")  # one `lost` map
    os.kill(s.pid, signal.SIGSTOP)
    try:
        for _ in range(150):
            subprocess.run(["/bin/true"])
    finally:
        os.kill(s.pid, signal.SIGCONT)
    before = lost_in_kernel(s.pid)
    assert before > 0, "the test did not overflow the ring buffer"
    t0 = time.time()

    def fresh_health():
        hs = [h for h in health_events(s) if _unix(h) > t0]
        return hs[-1] if hs else None

    h = wait_for(fresh_health, timeout=15, what="a health event after the overflow")
    after = lost_in_kernel(s.pid)
    reported = h["sensor"]["health"]["sources"]["process"]["lost_kernel"]
    assert before <= reported <= after
    assert s.stop() == 0
    final = health_events(s)[-1]["sensor"]["health"]
    assert final["final"] is True
    assert final["sources"]["process"]["lost_kernel"] >= after
    assert "lost" in s.stderr()


def _unix(event) -> float:
    from sensor.schema import parse_time

    return parse_time(event["@timestamp"]) / 1e9


def test_sigterm_during_exec_storm_leaves_valid_files_and_matching_counts(start_sensor):
    s = start_sensor("--store-segment-bytes", "64KiB")
    storm = subprocess.Popen(["/bin/sh", "-c", "i=0; while [ $i -lt 4000 ]; do /bin/true; i=$((i+1)); done"])
    try:
        wait_for(lambda: len(list(s.data_dir.glob("events/*.zst"))) >= 2, timeout=60,
                 what="segments to rotate during the storm")
        assert storm.poll() is None, "the storm ended before the sensor was stopped"
        assert s.stop() == 0
    finally:
        storm.kill()
        storm.wait()

    files = sorted((s.data_dir / "events").iterdir())
    assert files and all(f.name.endswith(".jsonl.zst") for f in files), files
    stored = 0
    process_events = 0
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600
        with zstandard.ZstdDecompressor().stream_reader(f.open("rb")) as r:
            for line in r.read().splitlines():
                ev = json.loads(line)
                stored += 1
                process_events += ev["event"]["dataset"] == "process"
    final = health_events(s)[-1]["sensor"]["health"]
    assert final["final"] is True
    assert final["store"]["dropped"] == 0
    assert process_events == final["sources"]["process"]["emitted"] > 100
    assert (s.data_dir / "events").stat().st_mode & 0o777 == 0o700


def test_sigkill_leaves_closed_segments_readable(start_sensor):
    s = start_sensor("--store-segment-bytes", "16KiB", "--store-flush-interval", "0.2")
    for _ in range(300):
        subprocess.run(["/bin/true"])
    wait_for(lambda: len(list(s.data_dir.glob("events/*.zst"))) >= 2, what="rotated segments")
    s.proc.kill()
    s.proc.wait()
    events = s.events()
    assert len(events) > 100
    # a restarted sensor on the same directory keeps the earlier events and continues the sequence
    s2 = start_sensor(data_dir=s.data_dir)
    s2.stop()
    later = s2.events()
    assert len(later) > len(events)
    seqs = [e["event"]["sequence"] for e in later]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_the_loop_reads_a_lone_exec_at_once_and_a_storm_in_batches(tmp_path, monkeypatch):
    """Quiet, a record is read as soon as the kernel has it; under load, at most every
    batch_interval (each read costs a wakeup and a cold cache), and nothing is missed."""
    import gc
    import threading

    from sensor import pipeline
    from sensor.config import defaults

    cfg = defaults()
    cfg["data_dir"] = str(tmp_path / "data")
    cfg["batch_interval"] = 0.5  # far from poll_interval (0.1 s), so the two cannot be confused
    # a storm here is "load" even on a machine so busy that /bin/true runs 200 times a second
    monkeypatch.setattr(pipeline, "BUSY_RECORDS_PER_S", 300)
    for key in ("files.enabled", "network.enabled", "security.enabled", "metrics.enabled",
                "inventory.processes", "services.enabled", "logins.enabled"):
        cfg[key] = False
    p = pipeline.Pipeline(cfg).start()
    reads: list[tuple[float, int]] = []  # (monotonic time, records) of each read with records
    drain = p._drain

    def counted(timers=True):
        n = drain(timers)
        if n:
            reads.append((time.monotonic(), n))
        return n
    p._drain = counted
    execs = []
    mark = ["/bin/true", "batching-test-5e1d"]  # not any other /bin/true on the host
    p.sinks.append(lambda e: execs.append(time.monotonic()) if e["event"].get("action") == "exec"
                   and e["process"].get("args") == mark else None)
    stop = threading.Event()
    loop = threading.Thread(target=p.run, args=(stop,))
    loop.start()
    try:
        time.sleep(0.5)  # quiet
        t0 = time.monotonic()
        subprocess.run(mark, check=True)
        wait_for(lambda: execs, what="the lone exec read")
        first = execs[0]
        # well under batch_interval (0.5 s), with room for a loaded machine's scheduling
        assert first - t0 < 0.4, f"a lone exec waited {first - t0:.3f} s for its read"

        time.sleep(0.5)
        n = 3000
        start = time.monotonic()
        subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt {n} ]; do {' '.join(mark)}; i=$((i+1)); done"], check=True)
        end = time.monotonic()
        wait_for(lambda: len(execs) == n + 1, what=lambda: f"{n} execs read, {len(execs) - 1} so far")
        # past the first poll window (0.1 s, when the loop sees the load), reads come at most
        # every 0.5 s; without batching, a storm is read a few records at a time
        during = [t for t, _ in reads if start + 0.3 < t <= end]
        assert end - start > 1.0, "the storm was too short to show batching"
        assert len(during) <= (end - start) / 0.5 + 2, f"{len(during)} reads in {end - start:.2f} s of storm"
    finally:
        stop.set()
        loop.join(30)
        gc.unfreeze()  # Pipeline.start froze this test process's heap: give it back to the collector
    assert not loop.is_alive()


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_the_sensor_raises_its_priority_as_configured(start_sensor):
    """priority_boost (4, as auditd's): preempted less under load; 0 leaves the nice value."""
    boosted = start_sensor("--no-files-enabled", "--no-network-enabled", "--no-security-enabled")
    plain = start_sensor("--priority-boost", "0", "--no-files-enabled", "--no-network-enabled",
                         "--no-security-enabled")
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert _nice(boosted.pid) == max(-20, mine - 4)
    assert _nice(plain.pid) == mine
    for tid in os.listdir(f"/proc/{boosted.pid}/task"):  # threads started later inherit it
        assert _nice(int(tid)) == max(-20, mine - 4)
    bad = subprocess.run([sys.executable, "-m", "sensor", "run", "--priority-boost", "-1", "--duration", "1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "--priority-boost: must not be negative" in bad.stderr
