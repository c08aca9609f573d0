"""`sensor hunt`: Sigma rules over recorded Windows logs (.evtx, read with the `evtx` package and
normalized by the live path's mappers) and over a sensor's stored events (retro-hunt). Runs on
any OS. Alerts go to stdout, the summary and every damaged file or chunk to stderr."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from .errors import SensorError
from .rules import alert
from .schema import rfc3339


class Hunt:
    """Counts what it read and found; `alerts` yields each alert once, with where it came from."""

    def __init__(self, rules):
        self.rules = rules
        self.files = self.records = self.events = 0
        self.per_rule: Counter = Counter()
        self.titles: dict[str, str] = {}
        self.problems: list = []

    def _alerts(self, event: dict, rules: list, where: dict):
        for rule in rules:
            self.per_rule[rule.id] += 1
            self.titles[rule.id] = rule.title
            a = alert(rule, event)
            a["rule"]["title"] = rule.title
            a.update(where)
            a.setdefault("sensor", {}).setdefault("trigger", {})["event"] = event
            yield a

    def evtx(self, path: Path):
        """Alerts of one .evtx file."""
        log_file, match = {"file": {"path": str(path)}}, self.rules.match
        for event in self.normalized(path):
            hits = match(event)
            if hits:  # the alert's source fields, for the few events that alert
                yield from self._alerts(event, hits, {"log": log_file, "winlog": _record(event["winlog"])})

    def normalized(self, path: Path):
        """Every event of the records of one .evtx file, finished as the live Event Log source
        finishes them (winevent.events_of), at the record's time; the file's process cache is its
        own (one log, one host)."""
        from .processes import ProcessTable
        from .windows.evtxfile import EvtxFile
        from .windows.host import RecordedHost
        from .windows.mappers import Mapper
        from .windows.winevent import events_of

        f = EvtxFile(path)
        table = ProcessTable(RecordedHost(str(path), "recorded"))
        mapper = Mapper(table)
        for ev in f.events():
            for event in events_of(ev, mapper, table):
                if "@timestamp" not in event:
                    event["@timestamp"] = rfc3339(ev.ts_ns)
                self.events += 1
                yield event
        self.files += 1
        self.records += f.records
        self.problems += f.problems

    def stored(self, data_dir: Path):
        """Alerts of a sensor's stored events (its data dir): the retro-hunt."""
        from .store import read_events

        where = {"log": {"file": {"path": str(data_dir)}}}
        for event in read_events(str(data_dir)):
            self.records += 1
            self.events += 1
            w = {**where, "winlog": event["winlog"]} if "winlog" in event else where
            yield from self._alerts(event, self.rules.match(event), w)
        self.files += 1


def _record(winlog: dict) -> dict:
    """An alert's winlog: which record it was (channel, ids, provider, computer), not its data."""
    return {k: x for k, x in winlog.items() if k != "event_data"}


def inputs(paths) -> list[tuple[str, Path]]:
    """(kind, path) of each thing to hunt: evtx files (folders searched) and sensor data dirs."""
    from .windows.evtxfile import find

    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise SensorError(f"hunt: no such file or directory: {p}")
        if p.is_dir() and (p / "events").is_dir():
            out.append(("stored", p))
        elif p.is_dir():
            found = find([p])
            if not found:
                raise SensorError(f"hunt: {p} holds no .evtx file and is not a sensor data dir (no events/)")
            out += [("evtx", f) for f in found]
        else:
            out.append(("evtx", p))
    return out


def run(args) -> int:
    from .rules import BUILTIN
    from .windows.sigma import load_rules as load_windows

    todo = inputs(args.paths)
    specs = [x.strip() for spec in args.rules or ["builtin"] for x in spec.split(",") if x.strip()]
    paths = [BUILTIN if x == "builtin" else Path(x) for x in specs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SensorError(f"--rules: no such file or directory: {', '.join(missing)}")
    # both platforms' rules: recorded logs and stored events may come from either
    t0 = time.monotonic()
    rules = load_windows(paths)
    loaded = time.monotonic()
    hunt, out = Hunt(rules), sys.stdout.buffer
    n_alerts = 0
    try:
        for kind, path in todo:
            for a in (hunt.evtx(path) if kind == "evtx" else hunt.stored(path)):
                n_alerts += 1
                out.write(orjson.dumps(a) + b"\n" if args.json else _line(a).encode() + b"\n")
    except BrokenPipeError:
        return 0
    out.flush()
    took = time.monotonic() - loaded
    for p in hunt.problems:
        print(f"sensor hunt: damaged: {p}", file=sys.stderr)
    summary = {"files": hunt.files, "records": hunt.records, "events": hunt.events, "alerts": n_alerts,
               "seconds": round(took, 3), "records_per_s": round(hunt.records / took) if took > 0 else None,
               "rules_loaded": len(rules.rules), "rules_load_seconds": round(loaded - t0, 1),
               "damaged": [str(p) for p in hunt.problems],
               "alerts_per_rule": {f"{hunt.titles[r]} ({r})": c for r, c in hunt.per_rule.most_common()}}
    if args.json:
        sys.stderr.write(orjson.dumps({"summary": summary}).decode() + "\n")
    else:
        print(f"sensor hunt: {summary['files']} files, {summary['records']:,} records in {took:.2f}s "
              f"({summary['records_per_s'] or 0:,} records/s), {len(rules.rules)} rules (loaded in "
              f"{summary['rules_load_seconds']}s), {n_alerts:,} alerts"
              + (f", {len(hunt.problems)} damaged chunks or files" if hunt.problems else ""), file=sys.stderr)
        for name, c in summary["alerts_per_rule"].items():
            print(f"  {c:>6,}  {name}", file=sys.stderr)
    return 1 if hunt.problems else 0


def _line(a: dict) -> str:
    w = a.get("winlog", {})
    where = f"{a['log']['file']['path']}" + (f" #{w['record_id']}" if w.get("record_id") is not None else "")
    proc = a.get("process", {})
    what = proc.get("command_line") or proc.get("executable") or a.get("file", {}).get("path") or ""
    return f"{a['rule']['level']:<8} {a['rule']['title']}  [{where}]  {what}"[:400]
