"""Feature tables of runs, per process and per time window, with what each column means and a report
of which columns carry information (variance, mutual information with the labels, redundant pairs)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from .. import syscalls
from .runs import Process, Run

G = syscalls.GROUPS
# Counted call families: column -> the calls it counts
FAMILIES = {
    "execs": {"execve", "execveat"},
    "forks": {"fork", "vfork", "clone", "clone3"},
    "file_opens": {"open", "openat", "openat2", "creat"},
    "file_writes": {"write", "pwrite64", "writev", "pwritev", "pwritev2"},
    "file_changes": {"unlink", "unlinkat", "rename", "renameat", "renameat2", "chmod", "fchmod", "fchmodat",
                     "chown", "fchown", "lchown", "fchownat", "link", "linkat", "symlink", "symlinkat",
                     "mkdir", "mkdirat", "rmdir", "truncate", "ftruncate"},
    "net_sockets": {"socket", "socketpair"},
    "net_connects": {"connect"},
    "net_accepts": {"accept", "accept4", "listen", "bind"},
    "net_sends": {"sendto", "sendmsg", "sendmmsg"},
    "net_recvs": {"recvfrom", "recvmsg", "recvmmsg"},
    "fd_dups": {"dup", "dup2", "dup3"},
    "mem_maps": {"mmap", "mprotect", "munmap", "mremap", "brk"},
    "creds_changes": {"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "capset", "setgroups"},
}
COLUMNS = {
    "run": "the run's source (trace directory, ADFA-LD file, LID-DS zip)",
    "label": "the run's label: normal, attack:NAME or other text",
    "process": "pid (or ADFA-LD file name) within the run",
    "name": "the process's command name (its last, after any exec)",
    "calls": "system calls made",
    "distinct_syscalls": "different calls made",
    "distinct_3grams": "different windows of 3 consecutive calls",
    "duration_s": "seconds from the first call to the last (0 where the layout has no times)",
    "calls_per_s": "calls over duration_s (0 when that is 0)",
    "failed_frac": "share of calls that returned an error (0 where the layout has no return values)",
    "in_calls_ms": "time spent inside calls, ms (entry to exit; 0 without durations)",
    "children": "processes of the run whose parent it is",
    "depth": "parents above it within the run (0 for the traced command)",
    "descendants": "processes below it within the run",
    **{f: f"calls of: {', '.join(sorted(s))}" for f, s in FAMILIES.items()},
    **{f"per_s.{f}": f"{f} per second of duration_s" for f in ("execs", "file_opens", "net_connects")},
    **{f"frac.{g}": f"share of calls in strace's %{g}-like group (sensor/syscalls.py GROUPS)" for g in G},
    "ngram.*": "count of each syscall n-gram (`ngram.openat>read>close`; n from --ngram, 1 = each call)",
}
WINDOW_COLUMNS = {
    "run": COLUMNS["run"], "label": COLUMNS["label"],
    "window_start_s": "seconds from the run's first call to the window's start",
    "processes": "processes with a call in the window", "new_processes": "processes whose first call is in it",
    "calls": "system calls in the window", "distinct_syscalls": "different calls in it",
    **{f: f"calls of {f} (as per process) in the window" for f in FAMILIES},
}
META = ("run", "label", "process", "name")


def _tree(procs: list[Process]) -> dict[str, tuple[int, int, int]]:
    """key -> (children, depth, descendants) within the run, from each process's parent pid."""
    kids: dict[str, list[str]] = {}
    keys = {p.key for p in procs}
    parent = {p.key: str(p.ppid) for p in procs if p.ppid is not None and str(p.ppid) in keys}
    for k, pk in parent.items():
        kids.setdefault(pk, []).append(k)

    def depth(k, seen=0):
        return depth(parent[k], seen + 1) if k in parent and seen < len(procs) else seen

    def below(k):
        return sum(1 + below(c) for c in kids.get(k, []))

    return {p.key: (len(kids.get(p.key, [])), depth(p.key), below(p.key)) for p in procs}


def _ngrams(calls: list[str], n: int) -> Counter:
    return Counter(">".join(calls[i:i + n]) for i in range(max(len(calls) - n + 1, 0)))


def process_row(p: Process, tree: tuple[int, int, int], ngram: int = 1) -> dict:
    calls = p.calls
    counts = Counter(calls)
    n = max(len(calls), 1)
    dur = float((p.ts[-1] - p.ts[0]) / 1e9) if p.ts is not None and len(p.ts) > 1 else 0.0
    row = {"calls": len(calls), "distinct_syscalls": len(counts),
           "distinct_3grams": len(set(zip(calls, calls[1:], calls[2:]))), "duration_s": dur,
           "calls_per_s": len(calls) / dur if dur else 0.0,
           "failed_frac": float((p.ret < 0).mean()) if p.ret is not None and len(p.ret) else 0.0,
           "in_calls_ms": float(p.duration.sum() / 1e6) if p.duration is not None else 0.0}
    row["children"], row["depth"], row["descendants"] = tree
    for f, names in FAMILIES.items():
        row[f] = sum(counts[c] for c in names)
    for f in ("execs", "file_opens", "net_connects"):
        row[f"per_s.{f}"] = row[f] / dur if dur else 0.0
    for g, names in G.items():
        row[f"frac.{g}"] = sum(counts[c] for c in names) / n
    for gram, k in _ngrams(calls, ngram).items():
        row[f"ngram.{gram}"] = k
    return row


def per_process(runs: list[Run], ngram: int = 1) -> list[dict]:
    rows = []
    for r in runs:
        tree = _tree(r.processes)
        for p in r.processes:
            rows.append({"run": r.source, "label": r.label, "process": p.key, "name": p.name,
                         **process_row(p, tree[p.key], ngram)})
    return rows


def per_window(runs: list[Run], seconds: float) -> list[dict]:
    """Each run cut into windows of `seconds` from its first call; runs without times are one window."""
    rows = []
    for r in runs:
        starts = [p.ts[0] for p in r.processes if p.ts is not None and len(p.ts)]
        t0 = min(starts) if starts else 0
        acc: dict[int, dict] = {}
        for p in r.processes:
            ts = p.ts if p.ts is not None and len(p.ts) == len(p.calls) else np.full(len(p.calls), t0)
            idx = ((ts - t0) / 1e9 // seconds).astype(np.int64)
            order = np.argsort(idx, kind="stable")
            calls = [p.calls[i] for i in order.tolist()]
            ws, first = np.unique(idx[order], return_index=True)
            for w, a, b in zip(ws.tolist(), first.tolist(), [*first[1:].tolist(), len(calls)]):
                sel = calls[a:b]
                row = acc.setdefault(w, {"processes": 0, "new_processes": 0, "calls": 0, "names": Counter()})
                row["processes"] += 1
                row["new_processes"] += int(w == ws[0])
                row["calls"] += len(sel)
                row["names"].update(sel)
        for w, row in sorted(acc.items()):
            names = row.pop("names")
            rows.append({"run": r.source, "label": r.label, "window_start_s": w * seconds, **row,
                         "distinct_syscalls": len(names),
                         **{f: sum(names[c] for c in s) for f, s in FAMILIES.items()}})
    return rows


def table(rows: list[dict]) -> pa.Table:
    """Rows to one table: every column any row has, 0 where a row lacks a count."""
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return pa.table({c: [row.get(c, None if c in META else 0) for row in rows] for c in cols})


def matrix(rows: list[dict], columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The numeric columns as a float matrix (the given columns, in order, 0 where absent)."""
    if columns is None:
        columns = sorted({c for row in rows for c in row if c not in META and c != "window_start_s"})
    return np.array([[float(row.get(c, 0)) for c in columns] for row in rows], dtype=np.float64).reshape(
        len(rows), len(columns)), columns


def report(rows: list[dict], redundant: float = 0.95, top: int = 20) -> dict:
    """Which columns carry information: variance, mutual information with normal/attack, redundant pairs."""
    x, columns = matrix(rows)
    labels = np.array(["attack" if str(r["label"]).startswith("attack:") else "normal" for r in rows])
    var = x.var(axis=0) if len(x) else np.zeros(len(columns))
    out = {"rows": len(rows), "columns": len(columns),
           "constant": [c for c, v in zip(columns, var) if v == 0],
           "variance": {c: float(v) for c, v in sorted(zip(columns, var), key=lambda cv: -cv[1])[:top]}}
    live = var > 0
    out["mutual_information"] = None  # one label only: nothing to tell apart
    if len(set(labels)) > 1 and live.any():
        try:
            from sklearn.feature_selection import mutual_info_classif
        except ImportError:  # the rest of the report needs numpy only
            out["missing"] = "scikit-learn (pip install scikit-learn): no mutual information"
        else:
            mi = mutual_info_classif(x[:, live], labels, random_state=0)
            names = [c for c, keep in zip(columns, live) if keep]
            out["mutual_information"] = {c: float(m) for c, m in sorted(zip(names, mi), key=lambda cm: -cm[1])[:top]}
    pairs = []
    if live.sum() > 1:
        idx = np.flatnonzero(live)
        corr = np.corrcoef(x[:, idx], rowvar=False)
        for i, j in zip(*np.triu_indices(len(idx), 1)):
            if abs(corr[i, j]) >= redundant:
                pairs.append([columns[idx[i]], columns[idx[j]], round(float(corr[i, j]), 4)])
    out["redundant_pairs"] = sorted(pairs, key=lambda p: -abs(p[2]))[:top * 5]
    out["redundant_threshold"] = redundant
    return out
