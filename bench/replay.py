"""The exec path's Python side alone: records the default sensor's sources hand over during a real
exec storm, replayed through fresh pipelines (real store, builtin rules), CPU per exec.

    .venv/bin/python bench/replay.py [--execs 2000] [--rounds 5]

bench/run.py times the whole sensor against the storm; this isolates what user space does with
each record (process cache, builders, stamping, JSON, store, rules), so a change can be compared
within one run without the kernel or the storm's noise. Variants run alternately in each round:
as shipped (start-up objects frozen out of the cyclic GC, as Pipeline.start does), without that
freeze, and without rules.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sensor.config import defaults  # noqa: E402
from sensor.pipeline import Pipeline  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import update_section  # noqa: E402

STORM = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"


class Replayed:
    """A source that hands over recorded batches, one per poll, as the kernel sources did."""

    def __init__(self, name: str, module: str, batches: list):
        self.name, self.module, self._batches = name, module, list(reversed(batches))

    def poll(self):
        return self._batches.pop() if self._batches else []

    def pending(self) -> bool:
        return bool(self._batches)

    def fileno(self):
        return 0

    def start(self):
        return self

    def detach(self):
        pass

    def close(self):
        pass


def capture(n: int, data_dir: Path) -> list:
    """(source name, module, records) per poll of a default sensor's sources during a storm of n."""
    cfg = defaults()
    cfg["data_dir"] = str(data_dir)
    p = Pipeline(cfg).start()
    batches: list = []
    for s in p.sources:
        def poll(orig=s.poll, s=s):
            recs = orig()
            kept = [r for r in recs if not isinstance(r, dict)]  # timer sources' finished events
            if kept:
                batches.append((s.name, s.module, kept))
            return recs
        s.poll = poll
    stop = threading.Event()
    t = threading.Thread(target=p.run, args=(stop,))
    t.start()
    time.sleep(1)
    batches.clear()  # start-up snapshot records are not the storm's
    subprocess.run(["/bin/sh", "-c", STORM.format(n=n)], check=True)
    time.sleep(1)
    stop.set()
    t.join()
    return batches


def replay(batches: list, data_dir: Path, rules: str, freeze: bool) -> dict:
    cfg = defaults()
    cfg["data_dir"], cfg["rules"] = str(data_dir), rules
    grouped: dict = {}
    for name, module, recs in batches:
        grouped.setdefault((name, module), []).append(recs)
    sources = [Replayed(name, module, b) for (name, module), b in grouped.items()]
    p = Pipeline(cfg, sources=sources)
    gc.collect()
    if freeze:
        gc.freeze()
    spent = [0.0, 0]

    def on_gc(phase, info, t0=[0.0]):
        if phase == "start":
            t0[0] = time.process_time()
        else:
            spent[0] += time.process_time() - t0[0]
            spent[1] += 1
    gc.callbacks.append(on_gc)
    try:
        t0 = time.process_time()
        while any(s.pending() for s in sources):
            p._drain(False)
        cpu = time.process_time() - t0
    finally:
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
        p.store.close()
    return {"cpu_s": cpu, "gc_s": spent[0], "collections": spent[1], "events": dict(p.emitted)}


VARIANTS = {"as shipped (builtin rules)": ("builtin", True),
            "without the GC freeze": ("builtin", False),
            "without rules": ("none", True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-replay-") as tmp:
        tmp = Path(tmp)
        batches = capture(args.execs, tmp / "capture")
        kinds = Counter(type(r).__name__ for _, _, recs in batches for r in recs)
        execs = kinds["ProcessExec"]
        res: dict = {name: [] for name in VARIANTS}
        for i in range(args.rounds):
            for name, (rules, freeze) in VARIANTS.items():
                res[name].append(replay(batches, tmp / f"replay-{i}-{len(res[name])}-{rules}-{freeze}", rules, freeze))
    rows = []
    for name, runs in res.items():
        us = statistics.median(r["cpu_s"] for r in runs) / execs * 1e6
        gc_us = statistics.median(r["gc_s"] for r in runs) / execs * 1e6
        rows.append(f"| {name} | {us:.1f} | {gc_us:.1f} | {statistics.median(r['collections'] for r in runs):.0f} |")
        print(f"{name}: {us:.1f} us CPU per exec, {gc_us:.1f} in the GC", file=sys.stderr)
    update_section("replay", f"""## Exec path, user space alone (replayed)

Measured by bench/replay.py on {platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()}),
{time.strftime("%Y-%m-%d")}. The records the default sensor's sources handed over during a storm of
{args.execs:,} execs ({', '.join(f'{k} {v:,}' for k, v in kinds.most_common())}) are replayed
through a fresh pipeline with the real store, {args.rounds} times per variant, variants alternating;
CPU per exec (its fork, exec and exit events and the file and network events around them), median.

| variant | CPU µs per exec | of which cyclic GC | collections per replay |
| --- | --- | --- | --- |
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
