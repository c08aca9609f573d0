"""Rule engine throughput: indexed (RuleSet.match) against the reference evaluator (match_all),
with the shared SigmaHQ Linux rules and the bundled ones, and with 1,000+ SigmaHQ rules; and
`sensor rules test` end to end on a JSON-lines file.

    .venv/bin/python bench/rules.py [--events 200000]

Events are process_creation events built from this host's real command lines (/proc) and common
admin commands, so most match nothing, as on a real host. The "distinct" corpus gives every
command line a token of its own, so no scan of a command line is ever reused.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from common import update_section  # noqa: E402
from sensor.rules import BUILTIN, RuleSet  # noqa: E402

SIGMA = ROOT.parent / "shared" / "sigma" / "rules"
COMMON = ["ls -la /var/log", "cat /etc/hostname", "grep -r foo /etc", "systemctl status ssh",
          "python3 -m http.server 8000", "tar -czf /tmp/backup.tgz /home/user", "curl -s https://example.org",
          "git status", "make -j2", "bash -c echo hello", "apt-get update", "ps aux", "vim notes.txt"]


def host_commands() -> list[tuple[str, str]]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        cmd = " ".join(a.decode(errors="replace") for a in args if a)
        if cmd:
            out.append((exe, cmd))
    out += [(f"/usr/bin/{c.split()[0]}", c) for c in COMMON]
    return out


def make_events(n: int, distinct: bool, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pool = host_commands()
    events = []
    for i in range(n):
        (exe, cmd), (pexe, pcmd) = rng.choice(pool), rng.choice(pool)
        if distinct:
            cmd, pcmd = f"{cmd} --job={i:x}", f"{pcmd} --job={rng.getrandbits(40):x}"
        events.append({"event": {"category": ["process"], "action": "exec", "id": str(i), "sequence": i},
                       "process": {"executable": exe, "command_line": cmd, "args": cmd.split(),
                                   "working_directory": "/home/user",
                                   "parent": {"executable": pexe, "command_line": pcmd}},
                       "user": {"name": "user"}})
    return events


def rate(match, events) -> tuple[float, int]:
    """Events per CPU second of this process, and the alerts."""
    t0 = time.process_time()
    hits = sum(len(match(e)) for e in events)
    return len(events) / (time.process_time() - t0), hits


def end_to_end(paths: list[Path], events: list[dict]) -> tuple[str, float, float]:
    """`sensor rules test` over the events as a JSON-lines file: its own events/s, and the wall
    time of the whole command (Python start and rule loading included)."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "events.jsonl"
        f.write_text("".join(json.dumps(e) + "\n" for e in events))
        t0, cpu0 = time.monotonic(), os.times()
        r = subprocess.run([sys.executable, "-m", "sensor", "rules", "test", *map(str, paths), "--events", str(f)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, check=True)
        wall, cpu1 = time.monotonic() - t0, os.times()
    cpu = cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system
    return r.stderr.strip().splitlines()[-1].split("; ")[-1], wall, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    shared = [p for p in (SIGMA / "linux", BUILTIN) if p.exists()]
    small = RuleSet.load(shared)
    big = RuleSet.load(shared + [SIGMA / "windows" / "process_creation"], products=("linux", "windows"))
    events, distinct = make_events(args.events, False), make_events(args.events, True, seed=1)
    few = events[:max(args.events // 20, 1000)]
    rows = []
    for name, rules, ref_events in (("shared + bundled", small, few), ("1,000+ SigmaHQ", big, few[:2000])):
        idx, hits = rate(rules.match, events)
        idx_distinct, _ = rate(rules.match, distinct)
        ref, ref_hits = rate(rules.match_all, ref_events)
        _, check = rate(rules.match, ref_events)
        assert check == ref_hits, (name, check, ref_hits)
        rows.append((name, len(rules.rules), idx, idx_distinct, ref, hits))
        print(f"{name}: {len(rules.rules)} rules: indexed {idx:,.0f}/s ({idx_distinct:,.0f}/s distinct), "
              f"reference {ref:,.0f}/s, {hits:,} alerts")
    e2e, wall, cpu = end_to_end(shared, events)
    lines = [orjson.dumps(e) for e in events]
    t0 = time.process_time()
    for line in lines:
        orjson.loads(line)
    parse = len(lines) / (time.process_time() - t0)
    size = sum(map(len, lines)) / len(lines)
    print(f"sensor rules test: {e2e}, {wall:.1f} s wall for {len(events):,} events; parsing alone {parse:,.0f}/s")
    table = "\n".join(f"| {name} | {n:,} | **{idx:,.0f}** | {dist:,.0f} | {ref:,.0f} | {idx / ref:,.0f}x | {hits:,} |"
                      for name, n, idx, dist, ref, hits in rows)
    update_section("rules", f"""## Rule engine

Measured by bench/rules.py on {os.uname().nodename} ({os.cpu_count()} CPUs),
{time.strftime('%Y-%m-%d')}: process_creation events built from this host's real command lines, most
matching nothing; events per CPU second of one core. "distinct": every command line carries a token
of its own, so no field scan is reused. The reference evaluator (`RuleSet.match_all`) evaluates
every rule of the event's category and ran on the first {len(few):,} events (2,000 with 1,000+ rules).

| rules | loaded | indexed, events/s | indexed, distinct command lines | reference | speed-up | alerts ({len(events):,} events) |
| --- | --- | --- | --- | --- | --- | --- |
{table}

1,000+ SigmaHQ: the shared Linux rules, the bundled ones, and SigmaHQ's Windows process_creation
rules evaluated on the same schema (those whose fields it has), as the Windows sensor will load.

`sensor rules test` end to end over the same {len(events):,} events as a JSON-lines file with the
shared and bundled rules: {e2e} (its own figure: reading with orjson, matching, writing alerts);
{wall:.1f} s wall and {cpu:.1f} CPU s for the whole command, Python start and rule loading included.
Its figure is wall-clock time, which a loaded machine puts above its CPU time; orjson
alone parses {parse:,.0f} of these lines (about {size:,.0f} bytes each) per CPU second.

How: each rule's condition is reduced to the literals one of which every match must contain, per
field (sensor/ruleindex.py); one Aho-Corasick automaton per field finds them, and only the rules
whose literals appeared are evaluated. A field value seen again (executables, recurring command
lines) reuses its scan. Before the index, every rule ran on every event: 6,800 events/s with 45
rules, 3,100 with 140.
""")


if __name__ == "__main__":
    main()
