"""Benchmarks of the foundation; writes docs/performance.md and bench/results/*.json.

    .venv/bin/python bench/run.py [--execs 5000] [--rounds 5] [--idle-seconds 60]

Exec storm: a shell forks and execs /bin/true N times, bare, under `sensor run` (default and
process source only), auditd and bpftrace, alternating in each round so all see the same machine
load; we report the median ratio and each tool's CPU per exec.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sensor.config import defaults  # noqa: E402
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


OLD_BATCH = 0.005  # batch_interval's default until 2026-12 (and priority_boost 0: none)

PROCESS_ONLY = ("--no-files-enabled", "--no-network-enabled", "--no-security-enabled", "--no-metrics-enabled",
                "--no-inventory-processes", "--no-services-enabled", "--no-logins-enabled")


def kernel_programs(pid: int) -> dict:
    """name -> (run_time_ns, run_cnt) of the eBPF programs process `pid` holds: their fds' fdinfo
    (run_time_ns and run_cnt with kernel.bpf_stats_enabled), named through bpftool."""
    names = {p["id"]: p.get("name", "?") for p in json.loads(
        subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout or "[]")}
    progs, seen = {}, set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = dict(line.split(":", 1) for line in open(f"/proc/{pid}/fdinfo/{fd}") if ":" in line)
        except OSError:
            continue
        if "prog_id" not in info or int(info["prog_id"]) in seen:
            continue
        seen.add(int(info["prog_id"]))
        name = names.get(int(info["prog_id"]), info["prog_id"].strip())
        t, c = progs.get(name, (0, 0))
        progs[name] = (t + int(info.get("run_time_ns", 0)), c + int(info.get("run_cnt", 0)))
    return progs


def sensor_round(tmp: Path, name: str, n: int, flags=()) -> dict:
    s = Sensor(tmp / name, *flags)
    time.sleep(1)  # past start-up's own work (the /proc snapshot, first samples)
    cpu0, k0 = proc_cpu(s.p.pid), kernel_programs(s.p.pid)
    wall, shell = storm(n)
    time.sleep(0.5)  # the last records read
    cpu, k1 = proc_cpu(s.p.pid) - cpu0, kernel_programs(s.p.pid)
    # kernel time of each program over the storm (kernel.bpf_stats_enabled), all CPUs
    kernel = {k: (k1[k][0] - k0.get(k, (0, 0))[0], k1[k][1] - k0.get(k, (0, 0))[1]) for k in k1}
    rss = proc_hwm(s.p.pid)
    s.stop()
    execs = sum(1 for e in read_events(s.data_dir)
                if e["event"]["action"] == "exec" and e["process"].get("parent", {}).get("pid") == shell
                and e["process"].get("args") == ["/bin/true"])
    return {"wall": wall, "cpu": cpu, "rss": rss, "captured": execs, "kernel": kernel}


def auditd_round(tmp: Path, name: str, n: int) -> dict:
    from activity import Auditd

    (tmp / name).mkdir()
    a = Auditd(tmp / name, [["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "benchexec"]])
    try:
        cpu0 = proc_cpu(a.p.pid)
        wall, _ = storm(n)
        records = a.records("benchexec")  # waits for auditd to write behind
        return {"wall": wall, "cpu": proc_cpu(a.p.pid) - cpu0, "captured": records, "lost": a.lost()}
    finally:
        a.close()


def bpftrace_round(tmp: Path, name: str, n: int) -> dict:
    out = tmp / f"{name}.txt"
    p = subprocess.Popen(["bpftrace", "-o", str(out), "-e",
                          'tracepoint:sched:sched_process_exec { printf("%d %s\\n", pid, str(args->filename)); }'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() or b"Attaching" not in out.read_bytes():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bpftrace did not attach")
            time.sleep(0.05)
        cpu0 = proc_cpu(p.pid)
        wall, _ = storm(n)
        time.sleep(0.5)
        cpu = proc_cpu(p.pid) - cpu0
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:  # seen once: bpftrace ignoring SIGINT; the round still counts
            p.kill()
            p.wait()
    return {"wall": wall, "cpu": cpu, "captured": out.read_bytes().count(b" /bin/true\n")}


def bench_storm(n: int, rounds: int, tmp: Path) -> dict:
    """Bare, the default sensor, the process source alone, auditd and bpftrace, alternating."""
    tools = {"sensor run (default)": lambda r: sensor_round(tmp, f"default{r}", n),
             "sensor run (process source only)": lambda r: sensor_round(tmp, f"process{r}", n, PROCESS_ONLY),
             # the loop's read interval under load and the priority, as they were before these defaults
             f"sensor run (default, --batch-interval {OLD_BATCH} --priority-boost 0)": lambda r: sensor_round(
                 tmp, f"batch{r}", n, ("--batch-interval", str(OLD_BATCH), "--priority-boost", "0"))}
    if shutil.which("auditd") and shutil.which("auditctl"):
        tools["auditd, execve rule"] = lambda r: auditd_round(tmp, f"auditd{r}", n)
    if shutil.which("bpftrace"):
        tools["bpftrace, printf per exec"] = lambda r: bpftrace_round(tmp, f"bpftrace{r}", n)
    storm(200)  # warm the page cache
    bare, runs = {name: [] for name in tools}, {name: [] for name in tools}
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    stats.write_text("1")  # the programs' run time (a few ns a run more); put back however the run ends
    try:
        for r in range(rounds):
            for name, run in tools.items():
                # each tool's storm against a bare one just before it: the machine's speed drifts
                # within a round (a bare storm took 2.3 s, then 3.3 s, then 2.3 s again)
                bare[name].append(storm(n)[0])
                runs[name].append(run(r))
    finally:
        stats.write_text(was)
    out = {"execs": n, "rounds": rounds, "bare_s": [b for bs in bare.values() for b in bs], "tools": {}}
    for name, rs in runs.items():
        ratios = [x["wall"] / b for x, b in zip(rs, bare[name])]
        out["tools"][name] = {
            "wall_s": [x["wall"] for x in rs], "bare_s": bare[name], "ratio_median": statistics.median(ratios),
            "cpu_s": [x["cpu"] for x in rs], "cpu_us_per_exec": 1e6 * statistics.median(x["cpu"] for x in rs) / n,
            "captured": [x["captured"] for x in rs], "lost": [x.get("lost", 0) for x in rs],
            **({"peak_rss_bytes": max(x["rss"] for x in rs)} if "rss" in rs[0] else {}),
            **({"kernel_ns_per_exec": {prog: statistics.median(x["kernel"].get(prog, (0, 0))[0] for x in rs) / n
                                       for prog in rs[-1]["kernel"]},
                "kernel_runs_per_exec": {prog: statistics.median(x["kernel"].get(prog, (0, 0))[1] for x in rs) / n
                                         for prog in rs[-1]["kernel"]}} if "kernel" in rs[0] else {}),
        }
    return out


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
    rows = [f"| bare | {statistics.median(s['bare_s']):.2f} | 1.00x | | | |"]
    for name, t in s["tools"].items():
        captured = ", ".join(f"{c:,}" for c in t["captured"])
        rss = f" (peak RSS {t['peak_rss_bytes'] / 2**20:.0f} MiB)" if "peak_rss_bytes" in t else ""
        rows.append(f"| {name} | {statistics.median(t['wall_s']):.2f} | {t['ratio_median']:.2f}x | "
                    f"{t['cpu_us_per_exec']:.0f}{rss} | {captured} | {sum(t['lost']):,} |")
    kernel = s["tools"]["sensor run (default)"].get("kernel_ns_per_exec", {})
    runs = s["tools"]["sensor run (default)"].get("kernel_runs_per_exec", {})
    krows = [f"| {prog} | {runs[prog]:.1f} | {ns / 1000:.2f} | {ns / max(runs[prog], 1e-9):.0f} |"
             for prog, ns in sorted(kernel.items(), key=lambda kv: -kv[1])]
    update_section("process", f"""## Process events

Measured by bench/run.py on {res['machine']}, {res['date']}.

### Exec storm

A shell forks and execs `/bin/true` {s['execs']:,} times; {s['rounds']} rounds, each running every tool in
turn, each tool's storm right after a bare one, so both see the same machine load; the slowdown
is the median of the rounds' ratios of the two. CPU is the tool's own (utime + stime of the
sensor, auditd or bpftrace process) during the storm, per exec: one fork, one exec and one exit,
each a stored event for the sensor, with argv, entity, executable hash checks and rules
evaluated. auditd writes one record set per execve, bpftrace one line.

| tool | wall s (median) | slowdown (median) | CPU µs per exec (median) | execs captured per round | lost |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Under load (over 1,500 records a second) the sensor's loop reads the kernel buffers at most every
`batch_interval` ({1000 * defaults()["batch_interval"]:g} ms by default; an exec storm had woken it about once per exec).
The sensor also raises its own priority at start (`priority_boost`, {defaults()["priority_boost"]} by default: nice -{defaults()["priority_boost"]}, as
auditd's `priority_boost` does), so the storm's processes preempt it less often. The row with
`--batch-interval {OLD_BATCH} --priority-boost 0` is the default sensor as it was before both: each read
of the rings costs a wakeup and a cold cache, and so does each preemption, so fewer, larger reads
cost less per exec. The price is latency under load: an event reaches the store, the rules and
the responder up to `batch_interval` later.

The kernel side of the default sensor over the same storms (`kernel.bpf_stats_enabled`, median
of the rounds): time its programs ran, in the storm's processes and everywhere else on the host,
per exec. The raw syscall programs run on every syscall of the host, the storm's and the rest.

| program | runs per exec | µs per exec | ns per run |
| --- | --- | --- | --- |
{chr(10).join(krows)}

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
    ap.add_argument("--rounds", type=int, default=5)
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
