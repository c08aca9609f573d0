"""Host collectors over minutes: the sensor's psutil/inventory sources at their default intervals
next to the original collector design (full process dump every 5 s, a CSV write per sample),
both running at once on the same machine; writes the `collectors` section of docs/performance.md.

    .venv/bin/python bench/collectors.py [--seconds 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import update_section  # noqa: E402
from run import Sensor, proc_cpu, proc_hwm  # noqa: E402

# The original design, as its scripts did it: psutil resources every second, every process every
# 5 seconds, the service list every 5 seconds, each row opened, written and closed on its own.
ORIGINAL = r'''
import csv, os, subprocess, sys, time
import psutil
out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def append(name, row):
    new = not os.path.exists(f"{out}/{name}.csv")
    with open(f"{out}/{name}.csv", "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(list(row))
        w.writerow(list(row.values()))

tick = 0
while True:
    t = time.strftime("%Y-%m-%d %H:%M:%S")
    cpu = psutil.cpu_times_percent()._asdict(); mem = psutil.virtual_memory()._asdict()
    swap = psutil.swap_memory()._asdict(); disk = psutil.disk_io_counters()._asdict()
    net = psutil.net_io_counters()._asdict()
    append("hw_resources", {"time": t, **{f"cpu_{k}": v for k, v in cpu.items()},
                            **{f"mem_{k}": v for k, v in mem.items()}, **{f"swap_{k}": v for k, v in swap.items()},
                            **{f"disk_{k}": v for k, v in disk.items()}, **{f"net_{k}": v for k, v in net.items()}})
    if tick % 5 == 0:
        for p in psutil.process_iter(["pid", "name", "exe", "username", "create_time", "ppid", "io_counters",
                                      "memory_info", "cmdline"]):
            i = p.info
            io, m = i["io_counters"], i["memory_info"]
            append("processes", {"time": t, "pid": i["pid"], "name": i["name"], "exe": i["exe"], "user": i["username"],
                                 "create_time": i["create_time"], "ppid": i["ppid"],
                                 "read_count": io.read_count if io else "", "write_count": io.write_count if io else "",
                                 "read_bytes": io.read_bytes if io else "", "write_bytes": io.write_bytes if io else "",
                                 "rss": m.rss if m else "", "cmdline": " ".join(i["cmdline"] or [])})
        status = subprocess.run(["service", "--status-all"], capture_output=True, text=True).stdout
        for line in status.splitlines():
            append("services", {"time": t, "line": line.strip()})
    tick += 1
    time.sleep(1)
'''


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    args = ap.parse_args()
    res = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()})",
           "date": time.strftime("%Y-%m-%d"), "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="sensor-bench-") as tmp:
        tmp = Path(tmp)
        # the host collectors only: no kernel sources, no rules
        sensor = Sensor(tmp / "sensor", "--no-process-enabled", "--no-files-enabled", "--no-network-enabled",
                        "--no-security-enabled", "--rules", "none")
        orig_dir = tmp / "original"
        orig = subprocess.Popen([sys.executable, "-c", ORIGINAL, str(orig_dir)])
        time.sleep(2)  # both past their start-up
        s0, o0, t0 = proc_cpu(sensor.p.pid), proc_cpu(orig.pid), time.monotonic()
        b0s, b0o = du(tmp / "sensor"), du(orig_dir)
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        scpu, ocpu = proc_cpu(sensor.p.pid) - s0, proc_cpu(orig.pid) - o0
        srss, orss = proc_hwm(sensor.p.pid), proc_hwm(orig.pid)
        sbytes, obytes = du(tmp / "sensor") - b0s, du(orig_dir) - b0o  # JSON Lines as written; CSV
        sensor.stop()  # rotates: the segment is compressed with zstd
        orig.terminate()
        orig.wait()
        zbytes, stotal = du(tmp / "sensor"), sbytes + b0s
        res.update({
            "sensor": {"cpu_s": scpu, "cpu_pct": 100 * scpu / wall, "rss_bytes": srss, "bytes": sbytes,
                       "bytes_per_hour": sbytes * 3600 / wall, "compressed_ratio": zbytes / max(stotal, 1)},
            "original": {"cpu_s": ocpu, "cpu_pct": 100 * ocpu / wall, "rss_bytes": orss, "bytes": obytes,
                         "bytes_per_hour": obytes * 3600 / wall},
            "processes": len(list(Path("/proc").glob("[0-9]*"))),
        })
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "collectors.json").write_text(json.dumps(res, indent=1))
    s, o = res["sensor"], res["original"]
    update_section("collectors", f"""## Host collectors

Measured by bench/collectors.py on {res['machine']}, {res['date']}: {res['seconds']:.0f} s, both
running at once, {res['processes']} processes on the host.

The sensor runs its host collectors at their defaults (resources every 1 s; process inventory:
snapshot, then changes every 5 s; services; logins), no kernel sources, into its store (JSON Lines,
zstd when rotated). The original design samples the same resources every second, dumps every
process and the service list every 5 s, and opens, writes and closes a CSV per row.

| | CPU | % of one core | peak RSS | bytes written | per hour |
| --- | --- | --- | --- | --- | --- |
| sensor | {s['cpu_s']:.1f} s | {s['cpu_pct']:.2f} % | {s['rss_bytes'] / 2**20:.0f} MiB | {s['bytes'] / 2**10:,.0f} KiB | {s['bytes_per_hour'] / 2**20:,.1f} MiB as JSON Lines, {s['bytes_per_hour'] * s['compressed_ratio'] / 2**20:,.1f} MiB once rotated (zstd) |
| original design | {o['cpu_s']:.1f} s | {o['cpu_pct']:.2f} % | {o['rss_bytes'] / 2**20:.0f} MiB | {o['bytes'] / 2**10:,.0f} KiB | {o['bytes_per_hour'] / 2**20:,.1f} MiB |

The sensor's bytes are the JSON Lines it wrote during the window (its open segment); the rotated
figure applies the compression its segment got when the sensor stopped and rotated it.
""")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
