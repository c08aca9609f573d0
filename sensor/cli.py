"""The `sensor` command: run, events, doctor."""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time

import orjson

from . import __version__, config
from .errors import SensorError
from .shutdown import stop_on

log = logging.getLogger("sensor")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensor", description="Endpoint telemetry sensor (eBPF/ETW).")
    p.add_argument("--version", action="version", version=f"sensor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="trace the host and store events")
    run.add_argument("--config", metavar="FILE", help=f"YAML config (default: {config.DEFAULT_PATH} when present)")
    run.add_argument("--backend", choices=("auto", "ebpf", "psutil"),
                     help="every source at once: psutil runs no eBPF at all (process polling, watchdog "
                          "for files, no network or security events); auto falls back to it where eBPF "
                          "cannot load (default: each source's own backend option)")
    config.add_flags(run)

    ev = sub.add_parser("events", help="print stored events as JSON lines, in order")
    ev.add_argument("--data-dir", default=config.OPTIONS["data_dir"][1])
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    ev.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                    help="keep events whose dotted FIELD equals VALUE (repeatable: all must hold)")
    ev.add_argument("--since", metavar="TIME",
                    help="RFC 3339 time, Unix seconds, or an age like 30s, 10m, 2h, 1d")
    ev.add_argument("--postgres", metavar="DSN", help="read the fleet's central store instead of --data-dir")

    from .fleet import collect

    collect.add_arguments(sub.add_parser("collect", help="drain the fleet's JetStream stream into PostgreSQL"))

    from . import query
    from .dashboard import options as dashboard_options

    query.add_arguments(sub.add_parser("query", help="SQL over the local store (DuckDB `events` view)"),
                        config.OPTIONS["data_dir"][1])
    dashboard_options.add_arguments(sub.add_parser("dashboard", help="the web panel: alerts, responses, hosts"),
                                    config.OPTIONS["data_dir"][1])

    xp = sub.add_parser("export", help="convert stored events (e.g. into the original per-collector CSVs)")
    xp.add_argument("--data-dir", default=config.OPTIONS["data_dir"][1])
    xp.add_argument("--format", choices=["csv"], default="csv")
    xp.add_argument("-o", "--out", required=True, metavar="DIR")

    doc = sub.add_parser("doctor", help="check what this kernel and machine allow")
    doc.add_argument("--json", action="store_true", help="machine-readable output")

    tr = sub.add_parser("trace", help="record the syscalls of chosen processes",
                        usage="sensor trace -o OUT_DIR [--pid PID ...] [options] [-- COMMAND ARGS...]\n"
                              "       sensor trace recover TRACE_DIR  (seal a trace whose tracer was killed)")
    tr.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="trace directory to write")
    tr.add_argument("--pid", type=int, action="append", default=[], help="trace a running process (repeatable)")
    tr.add_argument("--follow-forks", action=argparse.BooleanOptionalAction, default=True,
                    help="trace children too, from their first instruction (default: on)")
    tr.add_argument("--syscalls", metavar="NAMES", help="only these syscalls, numbers or groups "
                    "(file, desc, network, process, memory, signal, ipc, creds), comma-separated")
    tr.add_argument("--args", action="store_true", help="record the six raw arguments and decode paths, addresses, fds")
    tr.add_argument("--label", help="dataset label: normal, attack:NAME, or any text")
    tr.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    tr.add_argument("--ring-buffer-bytes", default="32MiB", metavar="SIZE", help="kernel ring buffer (default 32MiB)")
    tr.add_argument("--park", choices=("auto", "always", "never"), default="auto",
                    help="park records on disk (OUT_DIR/.syscalls.spill) and encode them later: auto = while "
                         "the CPUs are saturated, so the traced workload keeps them (default auto)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="live progress line (default: when stderr is a terminal)")
    tr.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS", help="launch and trace it")

    ru = sub.add_parser("rules", help="check Sigma rules, or run them over stored events")
    rsub = ru.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    chk = rsub.add_parser("check", help="load rules and report each: ok, unsupported (why) or error")
    chk.add_argument("paths", nargs="+", metavar="PATH")
    chk.add_argument("--json", action="store_true", help="one JSON object per rule")
    tst = rsub.add_parser("test", help="run rules over stored events and print the alerts")
    tst.add_argument("paths", nargs="+", metavar="PATH")
    tst.add_argument("--events", required=True, metavar="FILE",
                     help="a JSON lines file of events, or a data dir of the sensor")

    qu = sub.add_parser("quarantine", help="list or restore quarantined files")
    qsub = qu.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    ql = qsub.add_parser("list", help="quarantined files with their hash and reason")
    qr = qsub.add_parser("restore", help="put a quarantined file back (hash checked)")
    qr.add_argument("id")
    qr.add_argument("--to", metavar="PATH", help="restore here instead of the original path")
    for q in (ql, qr):
        q.add_argument("--data-dir", default=config.OPTIONS["data_dir"][1])

    ds = sub.add_parser("dataset", help="turn trace directories into datasets")
    dsub = ds.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    ex = dsub.add_parser("export", help="merge traces, or a data dir's stored events, into one dataset")
    ex.add_argument("trace_dirs", nargs="*", metavar="TRACE_DIR")
    ex.add_argument("--from-store", metavar="DATA_DIR",
                    help="instead of traces: a `sensor run` data dir, one labelled table per dataset (parquet)")
    ex.add_argument("--format", required=True, choices=("parquet", "csv", "adfa", "lidds"))
    ex.add_argument("-o", "--output", required=True, metavar="OUT")
    ex.add_argument("--train", type=float, default=0.7, help="share of normal runs for training (0.7)")
    ex.add_argument("--validation", type=float, default=0.15, help="share for validation (0.15)")
    ex.add_argument("--test", type=float, default=0.15, help="share for the normal test set (0.15)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    ex.add_argument("--allow-incomplete", action="store_true",
                    help="adfa/lidds: write even when a normal split gets no run (warns)")
    ex.add_argument("--syscall-table", choices=("x86_64", "i386"),
                    help="adfa: numbers of this table, mapped by name (i386: ADFA-LD's own; default x86_64)")
    inf = dsub.add_parser("info", help="summarize a trace directory")
    inf.add_argument("trace_dir", metavar="TRACE_DIR")
    inf.add_argument("--json", action="store_true")

    from .learn import command as learn  # argparse only: numpy and scikit-learn load when used

    learn.add_arguments(sub)
    from .learn import labels

    labels.add_arguments(sub, config.OPTIONS["data_dir"][1])

    hu = sub.add_parser("hunt", help="run Sigma rules over .evtx files or stored events (any OS)")
    hu.add_argument("paths", nargs="+", metavar="PATH",
                    help="an .evtx file, a folder searched for .evtx files, or a sensor data dir")
    hu.add_argument("--rules", action="append", metavar="PATH|builtin",
                    help="Sigma rule files or folders, comma-separated or repeated (default: builtin)")
    hu.add_argument("--json", action="store_true", help="alerts as JSON lines, the summary as JSON on stderr")
    return p


def _recover_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensor trace recover", description="Seal a trace whose `sensor trace` "
                                "was killed: its whole segments and parked records into syscalls.parquet, "
                                "metadata.json status `cut short`. Safe to run again.")
    p.add_argument("trace_dir", metavar="TRACE_DIR")
    p.set_defaults(command="trace-recover")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `trace` takes a command after its options, so `trace recover` is parsed on its own
    args = _recover_parser().parse_args(argv[2:]) if argv[:2] == ["trace", "recover"] else _parser().parse_args(argv)
    try:
        if args.command == "dataset":
            from . import dataset  # pyarrow: only for the commands that need it

            return dataset.run(args)
        if args.command in ("model", "features"):
            from .learn import command as learn

            return learn.run(args)
        if args.command == "label":
            from .learn import labels

            return labels.run(args)
        if args.command == "query":
            from .query import cmd_query

            return cmd_query(args)
        if args.command == "dashboard":
            from .dashboard.server import run as run_dashboard

            return run_dashboard(args)
        if args.command == "hunt":
            from . import hunt

            return hunt.run(args)
        if args.command == "collect":
            from .fleet import collect

            return collect.run(args)
        return {"run": cmd_run, "events": cmd_events, "export": cmd_export, "doctor": cmd_doctor,
                "trace": cmd_trace, "rules": cmd_rules, "quarantine": cmd_quarantine,
                "trace-recover": cmd_trace_recover}[args.command](args)
    except SensorError as exc:
        print(f"sensor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_run(args) -> int:
    cfg = config.resolve(args)
    if args.backend:
        cfg["process.backend"] = args.backend
        cfg["files.backend"] = "watchdog" if args.backend == "psutil" else args.backend
        if args.backend == "psutil":
            cfg["network.enabled"] = cfg["security.enabled"] = False
    logging.basicConfig(level=cfg["log_level"].upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .backend import system
    from .pipeline import Pipeline

    if cfg["priority_boost"] > 0:  # first: every thread the pipeline starts inherits it
        try:
            system.boost_priority(cfg["priority_boost"])
        except (OSError, ValueError) as exc:  # not root, or no CAP_SYS_NICE: runs as it is
            logging.getLogger("sensor").warning("priority_boost %d not applied: %s", cfg["priority_boost"], exc)
    pipeline = Pipeline(cfg).start()
    from .learn.labels import record_run

    record_run(cfg)  # label and config, for `sensor dataset export --from-store`
    stop, _ = stop_on((signal.SIGTERM, signal.SIGINT))
    if system.RELOAD_SIGNAL is not None:  # SIGHUP (systemctl reload): rules and response policies
        from .reload import Reloader

        Reloader(pipeline, lambda: config.resolve(args)).install(system.RELOAD_SIGNAL)
    console = cfg["console"] == "on" or (cfg["console"] == "auto" and sys.stdout.isatty())
    print(f"sensor {__version__}: tracing {', '.join(s.name for s in pipeline.sources) or 'nothing'}"
          f" into {pipeline.store.events_dir}; Ctrl-C stops", file=sys.stderr)
    if console:
        from .console import LiveSummary

        summary = LiveSummary(pipeline)
        pipeline.sinks.append(summary)
        with summary:
            pipeline.run(stop, cfg["duration"])
    else:
        pipeline.run(stop, cfg["duration"], on_health=_print_health)
    stop.ignore_the_rest()
    h = pipeline.health()
    lost = sum(s["lost_kernel"] + s["lost_user"] for s in h["sources"].values())
    print(f"sensor: stopped; {pipeline.store.written:,} events stored, {lost:,} lost in the sensor,"
          f" {pipeline.store.dropped:,} not stored", file=sys.stderr)
    if pipeline.uploader is not None:
        u = pipeline.uploader.stats()
        print(f"sensor: upload: {u['uploaded']:,} files uploaded, {u['pending']:,} wait for the next start,"
              f" {u['failed']:,} attempts failed, {u['deleted_unuploaded']:,} deleted before upload", file=sys.stderr)
    return 0


def _print_health(h: dict):
    parts = [f"{name}: {s['emitted']:,} events, {s['lost_kernel']:,} lost" for name, s in h["sources"].items()]
    print(f"sensor: up {h['uptime_s']:,.0f}s; " + "; ".join(parts) +
          f"; cpu {h['cpu_percent']}%, rss {h['rss_bytes'] >> 20} MiB", file=sys.stderr)


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(value: str) -> int:
    """--since: an age (30s, 10m, 2h, 1d), Unix seconds, or an RFC 3339 time, as epoch ns."""
    from .schema import parse_time

    m = _AGE.match(value.strip())
    if m:
        secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time_ns() - int(secs * 1e9)
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        return parse_time(value)
    except ValueError:
        raise SensorError(f"--since {value!r}: expected e.g. 10m, 1732492800 or 2026-11-24T10:00:00Z") from None


def _matches(event: dict, where: list[tuple[str, str]]) -> bool:
    from .schema import get

    for field, want in where:
        value = get(event, field)
        if isinstance(value, list):
            if want not in [str(v) for v in value]:
                return False
        elif value is None or (str(value).lower() if isinstance(value, bool) else str(value)) != want:
            return False
    return True


def cmd_events(args) -> int:
    from .store import read_events

    where = []
    for w in args.where:
        field, sep, value = w.partition("=")
        if not sep or not field:
            raise SensorError(f"--where {w!r}: expected FIELD=VALUE, e.g. process.name=bash")
        where.append((field, value))
    since = parse_since(args.since) if args.since else None
    if args.postgres:
        from .fleet.pgread import read_events as read_central

        events = read_central(args.postgres, where=where, since_ns=since, follow=args.follow)
    else:
        if not os.path.isdir(os.path.join(args.data_dir, "events")) and not args.follow:
            print(f"sensor: no events under {args.data_dir} (see --data-dir)", file=sys.stderr)
        events = read_events(args.data_dir, follow=args.follow, since_ns=since)
    out = sys.stdout.buffer
    try:
        for event in events:
            if _matches(event, where):
                out.write(orjson.dumps(event) + b"\n")
                if args.follow:
                    out.flush()
    except BrokenPipeError:
        pass
    return 0


def cmd_export(args) -> int:
    from .csvsink import CsvSink
    from .store import read_events

    sink = CsvSink(args.out, segment_seconds=float("inf"))
    n = 0
    for event in read_events(args.data_dir):
        sink.write(event)
        n += 1
        if n % 50_000 == 0:
            sink.flush()
    sink.close()
    print(f"sensor export: {n:,} events read, {sink.written:,} CSV rows in {args.out}", file=sys.stderr)
    return 0 if not sink.errors else 1


def cmd_trace(args) -> int:
    from pathlib import Path

    from .trace import TraceOptions, run

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        ring = config.parse_bytes(args.ring_buffer_bytes)
    except ValueError as exc:
        raise SensorError(f"--ring-buffer-bytes: {exc}") from None
    if ring & (ring - 1) or ring < 4096:
        raise SensorError(f"--ring-buffer-bytes: {ring} is not a power of two of at least 4KiB")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return run(TraceOptions(out=Path(args.output), pids=args.pid, command=command,
                            follow_forks=args.follow_forks, syscalls=args.syscalls, args=args.args,
                            label=args.label, duration=args.duration, ring_buffer_bytes=ring,
                            park=args.park, progress=progress))


def cmd_trace_recover(args) -> int:
    from .tracerecover import recover

    r = recover(args.trace_dir)
    if r["recovered"]:
        print(f"sensor trace recover: {r['path']}: {r['rows']:,} syscalls sealed into syscalls.parquet "
              f"({r['parked_rows']:,} of them were parked), status cut short", file=sys.stderr)
    else:
        print(f"sensor trace recover: {r['path']}: nothing to do, status {r['status']}", file=sys.stderr)
    return 0


def cmd_rules(args) -> int:
    from .rules import RuleSet, alert
    from .windows.sigma import WindowsRuleSet

    # `check` loads Windows rules too (sensor hunt runs them); `test` runs what `sensor run` would
    loader = WindowsRuleSet if args.rules_command == "check" else RuleSet

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise SensorError(f"no such rule file or directory: {', '.join(missing)}")
    rules = loader.load(args.paths)
    if args.rules_command == "check":
        for r in rules.reports:
            if args.json:
                print(orjson.dumps({"path": r.path, "id": r.id, "title": r.title, "status": r.status,
                                    "reason": r.reason}).decode())
            else:
                print(f"{r.status:<11} {r.title or '?'}  ({r.path}){': ' + r.reason if r.reason else ''}")
        counts = {s: sum(r.status == s for r in rules.reports) for s in ("ok", "unsupported", "error")}
        print(f"sensor rules: {counts['ok']} ok, {counts['unsupported']} unsupported, {counts['error']} errors",
              file=sys.stderr)
        return 1 if counts["error"] else 0
    from .store import read_events

    if os.path.isdir(args.events):
        events = read_events(args.events)
    else:
        try:
            events = _json_lines(args.events, open(args.events, "rb"))
        except OSError as exc:
            raise SensorError(f"--events {args.events}: {exc.strerror}") from None
    n = hits = 0
    out, match, started = sys.stdout.buffer, rules.match, time.perf_counter()
    for event in events:
        n += 1
        for rule in match(event):
            hits += 1
            out.write(orjson.dumps(alert(rule, event)) + b"\n")
    rate = n / max(time.perf_counter() - started, 1e-9)
    print(f"sensor rules: {len(rules.rules)} rules over {n:,} events: {hits:,} alerts; {rate:,.0f} events/s",
          file=sys.stderr)
    return 0


def _json_lines(path: str, f):
    with f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise SensorError(f"--events {path}:{number}: not a JSON event: {exc}") from None


def cmd_quarantine(args) -> int:
    from .quarantine import Quarantine

    q = Quarantine(args.data_dir)
    if args.quarantine_command == "list":
        for r in q.list():
            print(orjson.dumps(r).decode())
        return 0
    r = q.restore(args.id, args.to)
    print(f"sensor: restored {r['original_path']} -> {r['restored_to']} (sha256 {r['sha256']})", file=sys.stderr)
    return 0


def cmd_doctor(args) -> int:
    from . import doctor

    checks = doctor.run_checks()
    print(doctor.report(checks, as_json=args.json))
    return doctor.exit_code(checks)
