"""Syscall tracing benchmarks, side by side in one run; writes the tracing section of
docs/performance.md and bench/results/trace.json.

    .venv/bin/python bench/trace.py [--calls 2000000] [--slow-calls 100000] [--rounds 3] [--capacity-calls 50000000]
    .venv/bin/python bench/trace.py --loss-only [--loss-storms 20]    # storms without loss, only

A getppid() storm (bench/getppid.c) measures the slowdown of the workload's own loop against
running bare: sensor trace, the minimal libbpf C tracer (bench/mintrace), bpftrace, perf trace and
strace -f, each recording every call to a file. Slow tools run a smaller storm and are compared
with a bare run of the same size.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import update_section  # noqa: E402
SENSOR = [sys.executable, "-m", "sensor"]
GETPPID = 110  # x86_64


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)


def loop_seconds(stdout: str) -> float:
    return float([line for line in stdout.split() if re.fullmatch(r"\d+\.\d+", line)][-1])


def peak_rss_kib(stderr: str) -> int:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) if m else 0


class Tools:
    def __init__(self, tmp: Path, storm: str):
        self.tmp, self.storm = tmp, storm

    def bare(self, n):
        return loop_seconds(sh([self.storm, str(n)]).stdout), n, 0

    def sensor(self, n, *extra):
        secs, got, meta = self.sensor_run(n, *extra)
        return secs, got, meta["lost"]

    def sensor_run(self, n, *extra) -> tuple[float, int, dict]:
        """One storm under sensor trace: its loop seconds, getppid calls recorded, metadata.json."""
        out = self.tmp / f"sensor-{time.monotonic_ns()}"
        r = sh([*SENSOR, "trace", "-o", str(out), *extra, "--", self.storm, str(n)])
        meta = json.loads((out / "metadata.json").read_text())
        got = self.recorded(out)
        shutil.rmtree(out)
        return loop_seconds(r.stdout), got, meta

    @staticmethod
    def recorded(out: Path) -> int:
        """getppid calls in a sensor trace output directory."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        nr = pq.read_table(out / "syscalls.parquet", columns=["syscall_nr"])["syscall_nr"]
        return pc.sum(pc.equal(nr, GETPPID)).as_py() or 0

    def mintrace(self, n):
        out = self.tmp / "mintrace.bin"
        r = sh([str(ROOT / "build" / "mintrace"), str(out), "--", self.storm, str(n)])
        import numpy as np

        recs = np.fromfile(out, dtype=[("ts", "<u8"), ("tid", "<u4"), ("nr", "<u4")])
        lost = int(re.search(r"(\d+) lost", r.stderr).group(1))
        return loop_seconds(r.stdout), int((recs["nr"] == GETPPID).sum()), lost

    def bpftrace(self, n):
        out = self.tmp / "bpftrace.txt"
        prog = 'tracepoint:raw_syscalls:sys_enter /pid == cpid/ { printf("%d %d\\n", tid, args->id); }'
        r = sh(["bpftrace", "-o", str(out), "-e", prog, "-c", f"{self.storm} {n}"])
        got = sum(1 for line in out.read_text().splitlines() if line.endswith(f" {GETPPID}"))
        lost = sum(int(x) for x in re.findall(r"(\d+) events? lost", out.read_text() + r.stderr))
        return loop_seconds(out.read_text() + "\n" + r.stdout), got, lost

    def perf(self, n):
        out = self.tmp / "perf.txt"
        r = sh(["perf", "trace", "-o", str(out), "--", self.storm, str(n)])
        got = sum(1 for line in out.read_text(errors="replace").splitlines() if "getppid(" in line)
        return loop_seconds(r.stdout), got, 0

    def strace(self, n):
        out = self.tmp / "strace.txt"
        r = sh(["strace", "-f", "-o", str(out), self.storm, str(n)])
        got = sum(1 for line in out.read_text().splitlines() if "getppid(" in line)
        return loop_seconds(r.stdout), got, 0


def storm_bench(t: Tools, n: int, slow_n: int, rounds: int) -> dict:
    fast = {"sensor trace": t.sensor, "minimal C tracer": t.mintrace}
    slow = {"bpftrace": t.bpftrace, "perf trace": t.perf, "strace -f": t.strace}
    res: dict[str, dict] = {}
    t.bare(100000)  # warm up
    for _ in range(rounds):
        for name, size, fn in [("bare", n, t.bare), ("bare (small)", slow_n, t.bare)] + \
                [(k, n, f) for k, f in fast.items()] + [(k, slow_n, f) for k, f in slow.items()]:
            secs, got, lost = fn(size)
            r = res.setdefault(name, {"calls": size, "seconds": [], "recorded": [], "lost": []})
            r["seconds"].append(secs)
            r["recorded"].append(got)
            r["lost"].append(lost)
    for name, r in res.items():
        base = res["bare" if r["calls"] == n else "bare (small)"]
        r["median_s"] = statistics.median(r["seconds"])
        r["ratio"] = r["median_s"] / statistics.median(base["seconds"])
    return res


def mixed_bench(tmp: Path) -> dict:
    """A real workload with --args, recorded by sensor trace and counted by `strace -f -c` in the
    same run: the sensor traces strace, which runs the command. strace's own calls (its pid, the
    root of the trace) are left out; the rest is the command's, which both count."""
    cmd = ["/bin/sh", "-c", "tar -cf - /usr/include 2>/dev/null | wc -c >/dev/null"]
    out, summary = tmp / "mixed", tmp / "strace-c.txt"
    r = sh([*SENSOR, "trace", "--args", "-o", str(out), "--", "strace", "-f", "-c", "-o", str(summary), "--", *cmd])
    meta = json.loads((out / "metadata.json").read_text())
    import pyarrow.parquet as pq
    from collections import Counter

    rows = pq.read_table(out / "syscalls.parquet", columns=["pid", "syscall"]).to_pylist()
    sensor = Counter(x["syscall"] for x in rows if x["pid"] != meta["pids"][0])
    # strace -c's table: % time, seconds, usecs/call, calls, [errors,] syscall; then a total row
    strace = {}
    for line in summary.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and re.fullmatch(r"[\d.]+", f[0]) and f[-1] != "total":
            strace[f[-1]] = int(f[3])
    diff = {k: [sensor.get(k, 0), strace.get(k, 0)] for k in sorted(set(sensor) | set(strace))
            if sensor.get(k, 0) != strace.get(k, 0)}
    return {"command": " ".join(cmd), "sensor_captured": sum(sensor.values()), "sensor_lost": meta["lost"],
            "strace_calls": sum(strace.values()), "differences": diff, "returncode": r.returncode}


def capacity_bench(t: Tools, n: int) -> dict:
    """Two storms at once (one per core): the rate the capture sustains, its peak memory, and the
    disk it parks on; with parking (the default) and with every record encoded as it comes."""
    res = {}
    for park in ("auto", "never"):
        out = t.tmp / f"capacity-{park}"
        cmd = ["/usr/bin/time", "-v", *SENSOR, "trace", "--park", park, "-o", str(out), "--", "/bin/sh", "-c",
               f"{t.storm} {n // 2} & {t.storm} {n // 2}; wait"]
        t0 = time.monotonic()
        r = sh(cmd)
        wall = time.monotonic() - t0
        meta = json.loads((out / "metadata.json").read_text())
        span = (meta["end_ns"] - meta["start_ns"]) / 1e9
        res[park] = {"calls": n, "captured": meta["captured"], "lost": meta["lost"], "trace_seconds": span,
                     "rate_per_s": meta["captured"] / span, "wall_s": wall,
                     "peak_rss_mib": peak_rss_kib(r.stderr) / 1024,
                     "parked_peak_mib": meta["parked_peak_bytes"] / 2**20}
        shutil.rmtree(out)
    return res


def paused_trace(t: Tools, n: int, out: Path, *extra: str) -> float:
    """A storm under sensor trace while the tracer is stopped, so its records wait in the kernel;
    then the tracer goes on. Returns the seconds from then until sensor trace has finished."""
    p = subprocess.Popen([*SENSOR, "trace", "--no-progress", *extra, "-o", str(out), "--", t.storm, str(n)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()  # printed once the command runs
    os.kill(p.pid, signal.SIGSTOP)
    storm = int(re.search(r"pids (\d+)", line).group(1))
    while True:  # its parent is stopped: the finished storm stays a zombie
        with open(f"/proc/{storm}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGCONT)
    p.wait()
    wall = time.monotonic() - t0
    p.stderr.close()
    return wall


def consumer_bench(t: Tools, n: int) -> dict:
    """User space alone: the storm runs while the tracer is stopped (its records wait in a 1 GiB
    ring), then the tracer drains them all into Parquet; the drain's wall and CPU time give the
    rate user space sustains, whatever the traced workload can produce on the cores left to it."""
    out = t.tmp / "consumer"
    wall = paused_trace(t, n, out, "--park", "never", "--ring-buffer-bytes", "1GiB")
    meta = json.loads((out / "metadata.json").read_text())
    return {"calls": n, "captured": meta["captured"], "lost": meta["lost"], "drain_wall_s": wall,
            "rate_per_s": meta["captured"] / wall}


def loss_bench(t: Tools, n: int, storms: int, paused_n: int = 10_000, paused_ring: str = "64KiB") -> dict:
    """Storms one after another under sensor trace, each call recorded or counted lost. 6.18's
    ring lock refuses a reservation now and then even with room in the ring: such a batch waits
    in the kernel's queue (held_batches) and is sent later, so none should be lost. Then as many
    small storms while the tracer is stopped, with a ring too small for them: the ring refuses
    most batches for certain, and the queue must hold them all."""
    runs = [t.sensor_run(n) for _ in range(storms)]
    paused = []
    for i in range(storms):
        out = t.tmp / f"paused-{i}"
        paused_trace(t, paused_n, out, "--ring-buffer-bytes", paused_ring)
        paused.append((t.recorded(out), json.loads((out / "metadata.json").read_text())))
        shutil.rmtree(out)
    return {"calls": n, "storms": storms, "recorded": [got for _, got, _ in runs],
            "lost": [m["lost"] for _, _, m in runs], "held_batches": [m["held_batches"] for _, _, m in runs],
            "paused": {"calls": paused_n, "ring": paused_ring, "recorded": [got for got, _ in paused],
                       "lost": [m["lost"] for _, m in paused], "held_batches": [m["held_batches"] for _, m in paused]}}


def write_loss_doc(res: dict):
    loss = res["loss"]
    p = loss["paused"]

    def row(what, r, calls):
        return (f"| {what} | {sum(r['recorded']):,} of {len(r['recorded']) * calls:,} | **{sum(r['lost']):,}** | "
                f"{sum(r['held_batches']):,} (per storm: {', '.join(map(str, r['held_batches']))}) |")

    update_section("trace-loss", f"""### Storms without loss

Measured by `bench/trace.py --loss-only` on {res['machine']}, {res['date']}: {loss['storms']} getppid()
storms of {loss['calls']:,} calls, one after another, each under `sensor trace` (default ring); then
{loss['storms']} storms of {p['calls']:,} calls, each run while the tracer was stopped (SIGSTOP) with a
{p['ring']} ring, so the ring refused most batches for certain and the kernel had to hold them.

| storms | getppid calls recorded | lost (total) | batches the ring refused, held and delivered later |
| --- | --- | --- | --- |
{row(f"{loss['storms']} x {loss['calls']:,}, default ring", loss, loss['calls'])}
{row(f"{loss['storms']} x {p['calls']:,}, tracer stopped, {p['ring']} ring", p, p['calls'])}

Before refused batches were held, a refused batch was counted lost: four storms of 2,000,000 lost
0, 0, 0 and 64 records (one whole batch), and with the tracer stopped, the same day, 3 storms of
10,000 recorded 1,574, 1,571 and 1,573 calls (the rest lost, counted): what fit the ring.
""")


def write_doc(res: dict):
    s = res["storm"]
    rows = "\n".join(
        f"| {name} | {r['calls']:,} | {', '.join(f'{x:.3f}' for x in r['seconds'])} | {r['ratio']:.2f}x | "
        f"{', '.join(f'{g:,}' for g in r['recorded'])} | {', '.join(f'{x:,}' for x in r['lost'])} |"
        for name, r in s.items())
    m, c, u = res["mixed"], res["capacity"], res["consumer"]
    capacity_rows = "\n".join(
        f"| {park} | {r['captured']:,} | {r['lost']:,} | {r['trace_seconds']:.2f} | {r['rate_per_s']:,.0f} | "
        f"{r['peak_rss_mib']:.0f} MiB | {r['parked_peak_mib']:,.0f} MiB | {r['wall_s']:.1f} s |"
        for park, r in c.items())
    update_section("trace", f"""## Syscall tracing

Measured by `make bench` (bench/trace.py) on {res['machine']}, {res['date']}, {res['rounds']} rounds.
A getppid() storm; the slowdown is the workload's own loop time traced / bare (slow tools run a
smaller storm against a bare run of the same size). "recorded" counts the getppid calls each tool
wrote to its file.

| tool | calls | loop seconds | slowdown (median) | recorded | lost |
| --- | --- | --- | --- | --- | --- |
{rows}

Sustained capture, two storms at once (one per core, {c['auto']['calls']:,} calls), into Parquet:

| `--park` | captured | lost | trace seconds | calls/s | sensor peak RSS | parked on disk (peak) | wall, Parquet complete |
| --- | --- | --- | --- | --- | --- | --- | --- |
{capacity_rows}

Both storms and the tracer share the 2 cores. With `--park auto` (the default) the records wait on
disk while the CPUs are saturated and are encoded after the storms end (the wall column includes
that); with `never` each batch is encoded as it comes, taking CPU from the traced workload.

User space alone ({u['calls']:,} records waiting in the ring while the tracer was stopped, then
drained into Parquet): {u['captured']:,} captured, {u['lost']} lost, in {u['drain_wall_s']:.2f} s =
{u['rate_per_s']:,.0f} records/s (the drain's wall time includes writing and closing the Parquet file).

Mixed workload with `--args` (`{m['command']}`), in one run: `sensor trace -- strace -f -c -- COMMAND`,
so both see the same calls. sensor trace recorded {m['sensor_captured']:,} calls of the command's processes
({m['sensor_lost']} lost; strace's own calls left out), `strace -f -c` counted {m['strace_calls']:,}.
Where they differ (syscall: sensor, strace): {', '.join(f"{k} {a}/{b}" for k, (a, b) in m['differences'].items()) or 'nowhere'}.
`exit_group` never returns, and strace -c counts calls as they return; the rest are calls strace's
own helper processes make before their execve (its ptrace self-test child, and the command's child
while it stops itself for strace), which the sensor sees as part of the traced tree.
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--slow-calls", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--capacity-calls", type=int, default=50_000_000)
    ap.add_argument("--consumer-calls", type=int, default=10_000_000)
    ap.add_argument("--loss-storms", type=int, default=20)
    ap.add_argument("--loss-only", action="store_true", help="only the storms-without-loss run and its section")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-trace-bench-") as tmp:
        tmp = Path(tmp)
        storm = str(tmp / "getppid")
        subprocess.run(["gcc", "-O2", "-o", storm, str(ROOT / "bench" / "getppid.c")], check=True)
        t = Tools(tmp, storm)
        res = {"machine": f"{os.uname().nodename} ({os.cpu_count()} CPUs, kernel {os.uname().release})",
               "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds}
        if not args.loss_only:
            res.update(storm=storm_bench(t, args.calls, args.slow_calls, args.rounds),
                       capacity=capacity_bench(t, args.capacity_calls),
                       consumer=consumer_bench(t, args.consumer_calls),
                       mixed=mixed_bench(tmp))
        res["loss"] = loss_bench(t, args.calls, args.loss_storms)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    write_loss_doc(res)
    if args.loss_only:
        (out / "trace-loss.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res["loss"], indent=2))
        return
    (out / "trace.json").write_text(json.dumps(res, indent=2))
    write_doc(res)
    print(json.dumps({k: v for k, v in res.items() if k != "storm"}, indent=2))
    for name, r in res["storm"].items():
        print(f"{name:18} {r['ratio']:7.2f}x  recorded {r['recorded']}  lost {r['lost']}")


if __name__ == "__main__":
    main()
