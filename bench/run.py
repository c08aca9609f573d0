"""Benchmarks of the foundation; writes docs/performance.md and bench/results/*.json.

    .venv/bin/python bench/run.py [--execs 5000] [--rounds 3] [--idle-seconds 60]

Exec storm: a shell forks and execs /bin/true N times, bare and with `sensor run` tracing,
alternating rounds in one run so both see the same machine load; we report the median ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sensor.store import read_events  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import update_section  # noqa: E402

STORM = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"


def storm(n: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen(["/bin/sh", "-c", STORM.format(n=n)])
    p.wait()
    return time.perf_counter() - t0, p.pid


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Sensor:
    def __init__(self, data_dir: Path, *flags):
        self.data_dir = data_dir
        self.err = open(data_dir.with_suffix(".log"), "wb")
        self.p = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--data-dir", str(data_dir),
                                   "--console", "off", *flags], stderr=self.err, cwd=ROOT)
        log = data_dir.with_suffix(".log")
        deadline = time.monotonic() + 30
        while b"Ctrl-C stops" not in log.read_bytes():
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sensor did not start: {log.read_text()}")
            time.sleep(0.02)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(60)
        self.err.close()


def bench_storm(n: int, rounds: int, tmp: Path) -> dict:
    bare, traced, captured, cpu, rss = [], [], [], [], []
    storm(200)  # warm the page cache
    for r in range(rounds):
        bare.append(storm(n)[0])
        s = Sensor(tmp / f"storm{r}")
        cpu0 = proc_cpu(s.p.pid)
        wall, shell = storm(n)
        traced.append(wall)
        cpu.append(proc_cpu(s.p.pid) - cpu0)
        rss.append(proc_hwm(s.p.pid))
        s.stop()
        execs = sum(1 for e in read_events(s.data_dir)
                    if e["event"]["action"] == "exec" and e["process"].get("parent", {}).get("pid") == shell
                    and e["process"].get("args") == ["/bin/true"])
        captured.append(execs)
    ratios = [t / b for t, b in zip(traced, bare)]
    return {
        "execs": n, "rounds": rounds,
        "bare_s": bare, "traced_s": traced, "ratio_median": statistics.median(ratios),
        "captured": captured, "capture_pct_min": 100 * min(captured) / n,
        "sensor_cpu_s": cpu, "sensor_cpu_s_per_1000_execs": 1000 * statistics.median(cpu) / n,
        "sensor_peak_rss_bytes": max(rss),
    }


def bench_load(repeats: int = 5) -> dict:
    from sensor.linux.process import ProcessSource

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src = ProcessSource().start()
        times.append(time.perf_counter() - t0)
        src.close()
    return {"load_attach_ms": [round(t * 1000, 1) for t in times],
            "load_attach_ms_median": round(1000 * statistics.median(times), 1)}


def bench_idle(seconds: float, tmp: Path) -> dict:
    s = Sensor(tmp / "idle")
    time.sleep(1)
    cpu0, t0 = proc_cpu(s.p.pid), time.monotonic()
    time.sleep(seconds)
    cpu = proc_cpu(s.p.pid) - cpu0
    wall = time.monotonic() - t0
    rss = proc_hwm(s.p.pid)
    s.stop()
    return {"idle_seconds": round(wall, 1), "idle_cpu_s": cpu, "idle_cpu_pct": round(100 * cpu / wall, 3),
            "idle_peak_rss_bytes": rss}


def write_doc(res: dict):
    s, l, i = res["storm"], res["load"], res["idle"]
    update_section("process", f"""## Process events

Measured by bench/run.py on {res['machine']}, {res['date']}.

### Exec storm

A shell forks and execs `/bin/true` {s['execs']:,} times; {s['rounds']} alternating rounds of bare and
traced (`sensor run`, default config) in one run.

| figure | value |
| --- | --- |
| execs captured / execs done | {', '.join(f'{c:,}/{s["execs"]:,}' for c in s['captured'])} (min {s['capture_pct_min']:.1f} %) |
| wall time bare (s) | {', '.join(f'{t:.2f}' for t in s['bare_s'])} |
| wall time traced (s) | {', '.join(f'{t:.2f}' for t in s['traced_s'])} |
| traced / bare, median | {s['ratio_median']:.2f}x |
| sensor CPU seconds per round | {', '.join(f'{c:.2f}' for c in s['sensor_cpu_s'])} ({s['sensor_cpu_s_per_1000_execs']:.2f} s per 1,000 execs; each exec also makes a fork and an exit event) |
| sensor peak RSS | {s['sensor_peak_rss_bytes'] / 2**20:.1f} MiB |

### Start and idle

| figure | value |
| --- | --- |
| load + attach of the process programs (ring buffer mapped, median of {len(l['load_attach_ms'])}) | {l['load_attach_ms_median']} ms ({', '.join(map(str, l['load_attach_ms']))}) |
| idle CPU over {i['idle_seconds']} s | {i['idle_cpu_s']:.2f} CPU s = {i['idle_cpu_pct']} % of one core |
| idle peak RSS | {i['idle_peak_rss_bytes'] / 2**20:.1f} MiB |
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-bench-") as tmp:
        res = {
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()})",
            "date": time.strftime("%Y-%m-%d"),
            "storm": bench_storm(args.execs, args.rounds, Path(tmp)),
            "load": bench_load(),
            "idle": bench_idle(args.idle_seconds, Path(tmp)),
        }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(res, indent=2))
    write_doc(res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
