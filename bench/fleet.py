"""Fleet: simulated hosts replay events recorded by a real `sensor run` through the real nats sink
(outbox, publisher thread) into a nats-server of our own, and `sensor collect` stores them in a
PostgreSQL of our own. Writes the Fleet section of docs/performance.md, sizing figures into
docs/fleet.md and bench/results/fleet.json. About 3 minutes with the defaults.

    .venv/bin/python bench/fleet.py [--hosts 20] [--procs 4] [--rate 25000] [--duration 15]
                                    [--collectors 1,2] [--backlog 150000] [--outage 10] [--sample FILE.jsonl]

(a) events/s stored from --hosts hosts offering --rate events/s in all, with 1 and with 2
collectors, everything on this machine; the central side alone (the stream filled, then drained
by the collectors); (b) latency from an event's creation (the @timestamp the host stamps just
before sink.write) to the commit of its row (PostgreSQL's track_commit_timestamp), p50 and p99,
at 70% of the best rate of (a); (c) outbox growth while nats-server is down for --outage
seconds, and the time to drain it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from common import update_section  # noqa: E402

STAT_INTERVAL = 0.5
WARMUP = 4.0  # seconds before the measured window: connections, stream, first partitions


# -- the sample ------------------------------------------------------------------------------------

def record_sample(path: Path, seconds: float = 6.0) -> None:
    """Runs the real sensor for a few seconds under exec and file activity; keeps what it stored."""
    from sensor.store import read_events

    data = path.parent / "sample-data"
    log = open(path.parent / "sample.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--data-dir", str(data), "--console", "off",
                          "--duration", str(seconds)], stderr=log, cwd=ROOT)
    time.sleep(2)
    work = subprocess.Popen(["sh", "-c", "while :; do /bin/true; ls /tmp > /dev/null; sleep 0.005; done"])
    try:
        p.wait(seconds + 60)
    finally:
        work.kill()
        work.wait()
        log.close()
    import orjson

    with open(path, "wb") as f:
        for ev in read_events(data):
            f.write(orjson.dumps(ev) + b"\n")
    shutil.rmtree(data, ignore_errors=True)


# -- a host process: several simulated hosts, each a real NatsSink ----------------------------

def host_worker(hosts: list[str], sample: str, url: str, outbox_root: str, rate: float, nice: int, stop, stats):
    """Replays the sample as each of `hosts`, `rate` events/s in all, through one NatsSink per
    host; puts {host: sink.stats() + written} on `stats` every STAT_INTERVAL."""
    import orjson

    os.nice(nice)  # real hosts run elsewhere: here they take what the central side leaves

    from sensor.fleet.broker import BrokerOptions
    from sensor.fleet.nats_sink import NatsSink
    from sensor.schema import rfc3339

    events = [orjson.loads(line) for line in open(sample, "rb")]
    opts = BrokerOptions.parse(url)
    sinks = {h: NatsSink(opts, Path(outbox_root) / h, max_bytes=1 << 30) for h in hosts}
    written = dict.fromkeys(hosts, 0)
    start = last = time.monotonic()
    n = 0
    while not stop.is_set():
        for h, sink in sinks.items():
            src = events[written[h] % len(events)]
            ev = dict(src)
            ev["event"] = dict(src["event"], id=f"{h}-{written[h]:x}")
            ev["host"] = dict(src.get("host") or {}, id=h)
            ev["@timestamp"] = rfc3339(time.time_ns())  # creation, as the sensor's stamp
            sink.write(ev)
            written[h] += 1
        n += len(sinks)
        if n % 200 < len(sinks):
            now = time.monotonic()
            ahead = start + n / rate - now
            if ahead > 0:
                time.sleep(ahead)
            if now - last >= STAT_INTERVAL:
                stats.put({h: dict(s.stats(), written=written[h]) for h, s in sinks.items()})
                last = now
    for s in sinks.values():
        s.close(0)
    stats.put({h: dict(s.stats(), written=written[h], final=True) for h, s in sinks.items()})


class Hosts:
    """`procs` processes sharing `hosts` simulated hosts; the latest stats of each host."""

    def __init__(self, n_hosts: int, procs: int, rate: float, sample: Path, url: str, outbox_root: Path,
                 nice: int = 0):
        ctx = mp.get_context("spawn")  # no fork of a process with threads
        self.stop_event, self.queue = ctx.Event(), ctx.Queue()
        names = [f"bench-host-{i:02d}" for i in range(n_hosts)]
        groups = [names[i::procs] for i in range(procs)]
        self.procs = [ctx.Process(target=host_worker, args=(g, str(sample), url, str(outbox_root),
                                                             rate * len(g) / n_hosts, nice, self.stop_event,
                                                             self.queue),
                                  daemon=True) for g in groups if g]
        self.latest: dict[str, dict] = {}
        for p in self.procs:
            p.start()

    def poll(self, timeout: float = 0.0):
        try:
            while True:
                self.latest.update(self.queue.get(timeout=timeout))
                timeout = 0.0
        except queue.Empty:
            pass

    def total(self, key: str) -> int:
        self.poll()
        return sum(s.get(key) or 0 for s in self.latest.values())

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self):
        self.stop_event.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(bool(s.get("final")) for s in self.latest.values()) < len(self.latest):
            self.poll(0.2)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


# -- measuring -------------------------------------------------------------------------------

def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their children still running."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p] + p.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def reset_stream(url: str):
    import nats

    async def reset():
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream("SENSOR")
        except Exception:
            pass
        finally:
            await nc.close()

    asyncio.run(reset())


def stream_messages(url: str) -> int:
    from fleetservers import stream_messages as count

    return count(url)


def window_figures(dsn: str, t0: float, t1: float) -> dict:
    """Rows committed in [t0, t1] (unix seconds) per second, and the latency of those rows."""
    from fleetservers import query

    (n, p50, p99, pmax), = query(dsn, """
        WITH r AS (SELECT extract(epoch FROM c - ts) AS lat FROM (
                     SELECT ts, pg_xact_commit_timestamp((tx::text)::xid) AS c FROM events) x
                   WHERE c BETWEEN to_timestamp(%s) AND to_timestamp(%s))
        SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY lat),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY lat), max(lat) FROM r""", t0, t1)
    p50, p99, pmax = (float(x or 0) for x in (p50, p99, pmax))
    return {"stored_per_s": round(n / (t1 - t0)), "latency_p50_s": round(p50, 3),
            "latency_p99_s": round(p99, 3), "latency_max_s": round(pmax, 3)}


def wait_stored(dsn: str, n: int, limit: float):
    """Until `n` events are stored: watched through the statistics' inserted rows on one
    connection (a count(*) every half second, a backend each, was PostgreSQL CPU charged to the
    collectors' events), then counted once."""
    import psycopg

    deadline = time.monotonic() + limit
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            (inserted,) = conn.execute("SELECT tup_inserted FROM pg_stat_database WHERE datname = current_database()").fetchone()
            if inserted >= n and conn.execute("SELECT count(*) FROM events").fetchone()[0] >= n:
                return
            time.sleep(0.5)


def fresh_db(pg, name: str) -> str:
    pg.query(f"DROP DATABASE IF EXISTS {name}")
    pg.query(f"CREATE DATABASE {name}")
    return pg.dsn.rsplit("/", 1)[0] + f"/{name}"


def bench_throughput(args, tmp: Path, nats, pg, collectors_n: int, rate: float, label: str) -> dict:
    """Hosts offer `rate` events/s for --duration; figures over the window after WARMUP."""
    from fleetservers import Collector, query

    reset_stream(nats.url)
    db = f"bench_{label}"
    dsn = fresh_db(pg, db)
    outboxes = tmp / f"outbox-{label}"
    cols, hosts = [], None
    try:
        for i in range(collectors_n):
            cols.append(Collector(tmp / f"collect-{label}-{i}.log", nats.url, dsn, "--batch", str(args.batch)))
        hosts = Hosts(args.hosts, args.procs, rate, args.sample, nats.url, outboxes, args.host_nice)
        groups = {"hosts": hosts.pids(), "nats-server": [nats.proc.pid], "collectors": [c.proc.pid for c in cols],
                  "postgres": [pg.proc.pid]}
        time.sleep(WARMUP)
        hosts.poll()
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        sent0, written0, t0 = hosts.total("sent"), hosts.total("written"), time.time()
        time.sleep(args.duration)
        sent1, written1, t1 = hosts.total("sent"), hosts.total("written"), time.time()
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
        backlog = hosts.total("queued")
    finally:
        if hosts is not None:
            hosts.close()
        for c in cols:
            c.stop()
    published = sent1 - sent0
    out = {"label": label, "collectors": collectors_n, "hosts": args.hosts,
           "offered_per_s": round((written1 - written0) / (t1 - t0)), "published_per_s": round(published / (t1 - t0)),
           "outbox_backlog_at_end": backlog, "overflow": hosts.total("overflow"), "refused": hosts.total("refused")}
    out |= window_figures(dsn, t0, t1)
    stored = out["stored_per_s"] * (t1 - t0)
    out["cpu_us_per_event"] = {k: round(v * 1e6 / max(published if k in ("hosts", "nats-server") else stored, 1), 1)
                               for k, v in cpu.items()}  # hosts and broker per published, the rest per stored
    out["cpu_cores"] = {k: round(v / (t1 - t0), 2) for k, v in cpu.items()}
    out["collector_stored"] = [c.stored() for c in cols]
    (dups,), = query(dsn, "SELECT count(*) - count(DISTINCT id) FROM events")
    out["duplicate_rows"] = dups
    pg.query(f"DROP DATABASE {db}")
    shutil.rmtree(outboxes, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def bench_central(args, tmp: Path, nats, pg, collectors_n: int) -> dict:
    """The central side alone: the hosts fill the stream with --backlog events and stop; then
    the collectors drain it into PostgreSQL, nothing else of the benchmark running."""
    from fleetservers import Collector, query

    reset_stream(nats.url)
    dsn = fresh_db(pg, f"central_{collectors_n}")
    outboxes = tmp / f"outbox-central-{collectors_n}"
    hosts = Hosts(args.hosts, args.procs, args.rate, args.sample, nats.url, outboxes, args.host_nice)
    try:
        deadline = time.monotonic() + 120
        while hosts.total("sent") < args.backlog and time.monotonic() < deadline:
            hosts.poll(STAT_INTERVAL)
    finally:
        hosts.close()
    shutil.rmtree(outboxes, ignore_errors=True)
    n = stream_messages(nats.url)
    cols = []
    try:
        for i in range(collectors_n):
            cols.append(Collector(tmp / f"collect-central-{collectors_n}-{i}.log", nats.url, dsn,
                                  "--batch", str(args.batch)))
        pids = {"collectors": [c.proc.pid for c in cols], "postgres": [pg.proc.pid]}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        wait_stored(dsn, n, 120)
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in pids.items()}  # start-up included: a little high
    finally:
        for c in cols:
            c.stop()
    (stored, first, last), = query(dsn, """SELECT count(*), extract(epoch FROM min(c)), extract(epoch FROM max(c))
        FROM (SELECT pg_xact_commit_timestamp((tx::text)::xid) AS c FROM events) x""")
    span = float(last) - float(first) if stored else 0.0
    out = {"collectors": collectors_n, "backlog": n, "stored": stored, "seconds": round(span, 1),
           "stored_per_s": round(stored / span) if span else 0,
           "cpu_us_per_event": {k: round(v * 1e6 / max(stored, 1), 1) for k, v in cpu.items()}}
    print(json.dumps(out), flush=True)
    return out


def bench_outage(args, tmp: Path, nats) -> dict:
    """Hosts offer --outage-rate events/s; nats-server is killed for --outage seconds and
    started again on the same store; how the outboxes grow, and how long they take to drain."""
    reset_stream(nats.url)
    outboxes = tmp / "outbox-outage"
    hosts = Hosts(args.hosts, args.procs, args.outage_rate, args.sample, nats.url, outboxes, args.host_nice)
    try:
        time.sleep(WARMUP)
        nats.stop(signal.SIGKILL)
        time.sleep(args.outage)
        hosts.poll(STAT_INTERVAL)
        grown = {"queued": hosts.total("queued"), "queued_bytes": hosts.total("queued_bytes")}
        disk = sum(f.stat().st_size for f in outboxes.rglob("*.out"))
        nats.start()
        back = time.monotonic()
        drained = None
        while time.monotonic() - back < args.drain_limit:
            hosts.poll(STAT_INTERVAL)
            if hosts.total("queued") < args.outage_rate * 0.1:  # what 100 ms of new events leave waiting
                drained = time.monotonic() - back
                break
    finally:
        hosts.close()
    written, sent, overflow = hosts.total("written"), hosts.total("sent"), hosts.total("overflow")
    out = {"hosts": args.hosts, "offered_per_s": args.outage_rate, "outage_s": args.outage,
           "outbox_events": grown["queued"], "outbox_bytes": grown["queued_bytes"], "outbox_disk_bytes": disk,
           "drain_s": round(drained, 1) if drained is not None else None, "overflow": overflow,
           "written": written, "sent": sent, "stream_messages": stream_messages(nats.url)}
    shutil.rmtree(outboxes, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


# -- the docs --------------------------------------------------------------------------------

def write_docs(res: dict):
    rows = []
    for r in res["throughput"] + [res["latency"]]:
        cpu = r["cpu_us_per_event"]
        kept = "kept up" if r["stored_per_s"] >= 0.95 * r["offered_per_s"] else "fell behind"
        rows.append(f"| {'latency run' if r['label'] == 'latency' else 'throughput'} | {r['collectors']} | "
                    f"{r['offered_per_s']:,} | {r['published_per_s']:,} | **{r['stored_per_s']:,}** ({kept}) | "
                    f"{r['latency_p50_s']:.2f} | {r['latency_p99_s']:.2f} | {cpu['hosts']:.0f} / {cpu['nats-server']:.0f} / "
                    f"{cpu['collectors']:.0f} / {cpu['postgres']:.0f} | {r['duplicate_rows']} |")
    central = [f"| {c['collectors']} | {c['backlog']:,} | {c['seconds']:g} | **{c['stored_per_s']:,}** | "
               f"{c['cpu_us_per_event']['collectors']:.0f} / {c['cpu_us_per_event']['postgres']:.0f} |"
               for c in res["central"]]
    o, a = res["outage"], res["args"]
    drain = f"{o['drain_s']} s" if o["drain_s"] is not None else f"not within {a['drain_limit']:g} s"
    update_section("fleet", f"""## Fleet

Measured by bench/fleet.py on {res['machine']}, {res['date']}: the benchmark's own nats-server
{res['nats_version']} and PostgreSQL {res['pg_version']} (fsync off, as in the tests), {a['hosts']} simulated hosts in
{a['procs']} processes (at nice {a['host_nice']}: on a fleet they do not take the central side's cores) and the
collectors all share the machine's cores{res['load_note']}. The hosts replay
{res['sample_events']:,} events recorded by a real `sensor run` (mean {res['sample_bytes_mean']:,} bytes of JSON;
host.id and event.id rewritten per host, `@timestamp` stamped when replayed) through the real nats sink
(outbox, publisher thread, one connection each); `sensor collect --batch {a['batch']}` stores them.
Rates over {a['duration']:g} s after a {WARMUP:g} s warm-up. Latency: from an event's `@timestamp` to the
commit of its row (`track_commit_timestamp`). CPU: µs per event of hosts and nats-server (per
published event) and of collectors and PostgreSQL (per stored event).

| run | collectors | offered /s | published /s | stored /s | latency p50 s | p99 s | CPU µs: hosts / nats / collectors / postgres | duplicate rows |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

The central side alone, as on a fleet where the hosts run elsewhere: the hosts fill the stream
with at least {a['backlog']:,} events and stop, then the collectors (started then; `--writers 2` each) drain it into
PostgreSQL; the rate runs from the first commit to the last.

| collectors | events in the stream | seconds | stored /s | CPU µs per event: collectors / postgres (start-up included) |
| --- | --- | --- | --- | --- |
{chr(10).join(central)}

Broker down: {o['hosts']} hosts offering {o['offered_per_s']:,} events/s, nats-server killed -9 for
{o['outage_s']:g} s: the outboxes grew to {o['outbox_events']:,} events ({o['outbox_bytes'] / 2**20:.1f} MiB,
{o['outbox_bytes'] / max(o['outbox_events'], 1):.0f} bytes each) and drained {drain} after the restart
while new events kept coming; {o['overflow']:,} overflowed. The stream then held {o['stream_messages']:,}
messages for the {o['sent']:,} events acknowledged ({o['written']:,} written; the rest were still in the
outboxes when the hosts stopped).
""")


def write_fleet_doc(res: dict):
    """The measured figures in docs/fleet.md's Sizing section, between its markers."""
    doc = ROOT / "docs" / "fleet.md"
    best = max(res["throughput"], key=lambda r: r["stored_per_s"])
    lat, o = res["latency"], res["outage"]
    d = max(res["central"], key=lambda c: c["stored_per_s"])
    body = (f"Measured by `bench/fleet.py` ({res['date']}, {res['machine']}{res['load_note']}; the table is in "
            f"docs/performance.md). {res['args']['hosts']} simulated hosts, nats-server, the collectors and "
            f"PostgreSQL on the same 2 cores: {best['stored_per_s']:,} events/s stored with {best['collectors']} "
            f"collector(s) (offered {best['offered_per_s']:,}); at {lat['offered_per_s']:,} events/s offered, latency "
            f"from creation to commit p50 {lat['latency_p50_s']:.2f} s, p99 {lat['latency_p99_s']:.2f} s. The central "
            f"side alone (hosts stopped, a backlog in the stream) stored {d['stored_per_s']:,} events/s with "
            f"{d['collectors']} collector(s). CPU per event: "
            f"a host's publishing {best['cpu_us_per_event']['hosts']:.0f} µs (replay included), nats-server "
            f"{best['cpu_us_per_event']['nats-server']:.0f} µs, a collector {d['cpu_us_per_event']['collectors']:.0f} µs, "
            f"PostgreSQL {d['cpu_us_per_event']['postgres']:.0f} µs. An outbox record takes about "
            f"{o['outbox_bytes'] / max(o['outbox_events'], 1):.0f} bytes.")
    update_section("bench", body, doc, add=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--procs", type=int, default=4, help="processes the hosts are spread over (4)")
    ap.add_argument("--rate", type=float, default=25_000, help="events/s all hosts offer together (25,000)")
    ap.add_argument("--duration", type=float, default=15, help="measured seconds per run (15)")
    ap.add_argument("--backlog", type=int, default=150_000,
                    help="events the hosts leave in the stream for the central-side runs (150,000)")
    ap.add_argument("--latency-rate", type=float, help="events/s for the latency run (default: 70%% of the best stored rate)")
    ap.add_argument("--batch", type=int, default=1000, help="the collectors' --batch (1000)")
    ap.add_argument("--collectors", default="1,2", help="collector counts to run (1,2)")
    ap.add_argument("--outage", type=float, default=10, help="seconds nats-server is down (10)")
    ap.add_argument("--outage-rate", type=float, default=10_000, help="events/s offered around the outage (10,000)")
    ap.add_argument("--drain-limit", type=float, default=60, help="seconds the outboxes may take to drain (60)")
    ap.add_argument("--host-nice", type=int, default=10,
                    help="nice of the simulated hosts: on a fleet they do not share the central cores (10)")
    ap.add_argument("--sample", type=Path, help="JSON lines to replay (default: recorded now by `sensor run`)")
    args = ap.parse_args()
    if args.hosts < 1 or args.procs < 1 or args.rate <= 0 or args.duration <= 0:
        ap.error("--hosts, --procs, --rate and --duration must be positive")
    from fleetservers import NatsServer, Postgres

    with tempfile.TemporaryDirectory(prefix="sensor-bench-fleet-") as tmp:
        tmp = Path(tmp)
        if args.sample is None:
            args.sample = tmp / "sample.jsonl"
            record_sample(args.sample)
        lines = args.sample.read_bytes().splitlines()
        if not lines:
            raise SystemExit(f"{args.sample}: no events to replay")
        nats = NatsServer(tmp / "nats")
        pg = Postgres(track_commit_timestamp="on")
        try:
            load = os.getloadavg()[0]
            res = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()})",
                   "load_note": f", load average {load:.1f} before the run" if load > 0.5 else "",
                   "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) if isinstance(v, Path) else v
                                                                for k, v in vars(args).items()},
                   "sample_events": len(lines), "sample_bytes_mean": round(sum(map(len, lines)) / len(lines)),
                   "nats_version": subprocess.run(["nats-server", "--version"], capture_output=True,
                                                  text=True).stdout.split()[-1],
                   "pg_version": pg.query("SHOW server_version")[0][0].split()[0],
                   "throughput": [bench_throughput(args, tmp, nats, pg, int(n), args.rate, f"c{n}")
                                  for n in args.collectors.split(",")]}
            best = max(res["throughput"], key=lambda r: r["stored_per_s"])
            rate = args.latency_rate or round(0.7 * best["stored_per_s"], -2)
            res["latency"] = bench_throughput(args, tmp, nats, pg, best["collectors"], rate, "latency")
            res["central"] = [bench_central(args, tmp, nats, pg, int(n)) for n in args.collectors.split(",")]
            res["outage"] = bench_outage(args, tmp, nats)
        finally:
            nats.stop()
            pg.destroy()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(res, indent=2))
    write_docs(res)
    write_fleet_doc(res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
