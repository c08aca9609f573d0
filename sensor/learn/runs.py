"""Runs to learn from: `sensor trace` directories, ADFA-LD and LID-DS 2021 layouts, as named calls."""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..dataset import DatasetError, load_run, parse_label, sha256
from ..filehash import sha256_file
from ..i386 import name_of

TABLES = ("x86_64", "i386")


class RunsError(DatasetError):
    """A path given to learn from is no trace, ADFA-LD or LID-DS layout we read."""


@dataclass
class Process:
    """One process of a run: its calls by name in time order, and what else the layout kept."""
    key: str  # pid, or the file of an ADFA-LD trace
    name: str = "?"
    calls: list[str] = field(default_factory=list)
    ts: np.ndarray | None = None  # entry times (ns), where the layout has them
    ret: np.ndarray | None = None
    duration: np.ndarray | None = None
    ppid: int | None = None

    def program_calls(self) -> list[str]:
        """Its calls from its exec on: from the last of its first run of execve calls (a PATH
        search fails at each directory first). What a forked child did before exec depends on
        the program that forked it, not on the one it runs; a process that never execs: all.
        Signal handlers' returns are left out: a handler runs wherever its signal lands, so
        where its return falls is timing, not the program (dash's SIGCHLD landing before or
        after its wait4 made two sequences of one script, and false alarms on normal runs)."""
        calls = self.calls
        i = next((i for i, c in enumerate(calls) if c in EXECS), None)
        if i is None:
            i = 0
        while i + 1 < len(calls) and calls[i + 1] in EXECS:
            i += 1
        return [c for c in calls[i:] if c not in SIGNAL_RETURNS]


EXECS = frozenset({"execve", "execveat"})
SIGNAL_RETURNS = frozenset({"rt_sigreturn", "sigreturn"})


@dataclass
class Run:
    source: str
    label: str  # normal, attack:NAME, or other text
    sha256: str
    processes: list[Process]
    split: str = ""  # training, validation, test where the layout says
    layout: str = "trace"

    @property
    def kind(self) -> str:
        return parse_label(self.label)[0]


def read(paths, table: str | None = None) -> list[Run]:
    """Every run under the paths, each path a trace directory, an ADFA-LD or LID-DS folder or file."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RunsError(f"{p}: no such file or directory")
        if (p / "metadata.json").is_file():
            runs.append(_trace(p))
        elif p.suffix == ".zip" and p.is_file():
            runs.append(_lidds(p))
        elif p.suffix == ".txt" and p.is_file():
            runs.append(_adfa(p, _adfa_table(p, table)))
        elif p.is_dir():
            found = _folder(p, table)
            if not found:
                raise RunsError(f"{p}: no trace directories, ADFA-LD .txt traces or LID-DS .zip recordings in it")
            runs += found
        else:
            raise RunsError(f"{p}: not a trace directory, an ADFA-LD .txt trace or a LID-DS .zip recording")
    return runs


def _folder(root: Path, table: str | None) -> list[Run]:
    runs = []
    for path in sorted(root.rglob("*")):
        if path.name == "metadata.json" and (path.parent / "syscalls.parquet").exists():
            runs.append(_trace(path.parent))
        elif path.suffix == ".zip" and path.is_file():
            runs.append(_lidds(path))
        elif path.suffix == ".txt" and path.is_file():
            runs.append(_adfa(path, _adfa_table(path, table)))
    return runs


def _trace(path: Path) -> Run:
    r = load_run(path)
    t = pq.read_table(r.parquet, columns=["timestamp_ns", "duration_ns", "pid", "ppid", "comm", "syscall", "ret"])
    t = t.sort_by([("pid", "ascending"), ("timestamp_ns", "ascending")])
    pid = t["pid"].to_numpy()
    cuts = np.flatnonzero(np.diff(pid)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(pid)]
    names = np.asarray(t["syscall"].to_pylist(), dtype=object)
    comm = t["comm"].to_pylist()
    ts, dur, ret, ppid = (t[c].to_numpy() for c in ("timestamp_ns", "duration_ns", "ret", "ppid"))
    procs = [Process(str(pid[a]), comm[b - 1] or "?", names[a:b].tolist(), ts[a:b], ret[a:b], dur[a:b], int(ppid[a]))
             for a, b in zip(starts, ends) if b > a]
    return Run(str(path), r.meta.get("label") or "normal", sha256(r.parquet), procs, layout="trace")


# ADFA-LD: one process trace per file, a line of numbers; attacks under Attack_Data_Master/<NAME>_<k>/
def _adfa_root(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / "Training_Data_Master").is_dir() or (parent / "Attack_Data_Master").is_dir():
            return parent
    return None


def _adfa_table(path: Path, table: str | None) -> str:
    """The given table, else the manifest's (our exports), else i386: the original ADFA-LD's."""
    if table:
        return table
    root = _adfa_root(path)
    manifest = root / "manifest.json" if root else None
    if manifest and manifest.is_file():
        m = json.loads(manifest.read_text())
        # exports from before `syscall_table` was written hold x86_64 numbers
        return m.get("syscall_table", "x86_64") if m.get("format") == "adfa" else "i386"
    return "i386"


def _adfa(path: Path, table: str) -> Run:
    text = path.read_text().split()
    try:
        calls = [name_of(int(x), table) for x in text]
    except ValueError:
        raise RunsError(f"{path}: not an ADFA-LD trace (a line of syscall numbers)") from None
    parts = path.parts
    label, split = "normal", ""
    if "Attack_Data_Master" in parts:
        folder = path.parent.name
        label = "attack:" + (re.sub(r"_\d+$", "", folder) if folder != "Attack_Data_Master" else "unknown")
        split = "attack"
    elif "Training_Data_Master" in parts:
        split = "training"
    elif "Validation_Data_Master" in parts:
        split = "validation"
    # no program names in ADFA-LD: its processes are compared with every program's (sensor/learn/programs.py)
    return Run(str(path), label, sha256_file(path), [Process(path.stem, "?", calls)], split, "adfa")


# LID-DS 2021: NAME.zip holding NAME.sc (one line per event) and NAME.json (exploit, exploit_name)
def _lidds(path: Path) -> Run:
    try:
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            sc = next((m for m in members if m.endswith(".sc")), None)
            js = next((m for m in members if m.endswith(".json")), None)
            if sc is None:
                raise RunsError(f"{path}: no .sc member: not a LID-DS 2021 recording")
            meta = json.loads(z.read(js).decode().replace("'", '"')) if js else {}
            procs: dict[str, Process] = {}
            times: dict[str, list[int]] = {}
            with z.open(sc) as f:
                for n, raw in enumerate(f, 1):
                    cols = raw.decode(errors="replace").rstrip().split(" ")
                    if len(cols) < 7:
                        raise RunsError(f"{path}:{sc}:{n}: not a LID-DS event line")
                    if cols[6] != ">":  # a call's entry; its exit line adds nothing to the sequence
                        continue
                    p = procs.get(cols[2])
                    if p is None:
                        p = procs[cols[2]] = Process(cols[2], cols[3])
                        times[cols[2]] = []
                    p.name = cols[3]  # the latest: an exec changes it
                    p.calls.append(cols[5])
                    times[cols[2]].append(int(cols[0]))
    except zipfile.BadZipFile as exc:
        raise RunsError(f"{path}: {exc}") from None
    for key, p in procs.items():
        p.ts = np.asarray(times[key], dtype=np.int64)
    label = f"attack:{meta.get('exploit_name') or 'unknown'}" if meta.get("exploit") else "normal"
    parts = path.parts
    split = next((s for s in ("training", "validation", "test") if s in parts), "")
    return Run(str(path), label, sha256_file(path), list(procs.values()), split, "lidds")
