"""Rule engine throughput with every shared SigmaHQ rule and the bundled ones loaded.

    .venv/bin/python bench/rules.py [--events 200000]

Events are process_creation events built from this host's real command lines (/proc) and common
admin commands, so most match nothing, as on a real host.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    rules = RuleSet.load([p for p in (SIGMA, BUILTIN) if p.exists()])
    rng = random.Random(0)
    pool = host_commands()
    events = []
    for i in range(args.events):
        exe, cmd = rng.choice(pool)
        pexe, pcmd = rng.choice(pool)
        events.append({"event": {"category": ["process"], "action": "exec", "id": str(i), "sequence": i},
                       "process": {"executable": exe, "command_line": cmd, "args": cmd.split(),
                                   "working_directory": "/home/user",
                                   "parent": {"executable": pexe, "command_line": pcmd}},
                       "user": {"name": "user"}})
    t0 = time.process_time()
    hits = sum(len(rules.match(e)) for e in events)
    cpu = time.process_time() - t0
    rate = args.events / cpu
    print(f"{len(rules.rules)} rules, {args.events:,} events, {hits:,} alerts, {cpu:.2f} CPU s: {rate:,.0f} events/s per core")
    update_section("rules", f"""## Rule engine

Measured by bench/rules.py on {os.uname().nodename} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}:
{len(rules.rules)} Sigma rules loaded (every shared SigmaHQ Linux rule and the bundled ones), evaluated on
{args.events:,} process_creation events built from this host's real command lines; {hits:,} matched.
Throughput: **{rate:,.0f} events per second per core** ({cpu:.2f} CPU seconds). Only the rules of an
event's logsource category are evaluated, each compiled once into closures over the schema.
""")


if __name__ == "__main__":
    main()
