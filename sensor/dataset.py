"""Datasets from trace directories: info, and export to Parquet, CSV, ADFA-LD and LID-DS 2021."""
from __future__ import annotations

import json
import random
import re
import struct
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import __version__, syscalls
from .errors import SensorError
from .filehash import sha256_file
from .tracerecover import COMPLETE, RECORDING, open_unsealed, sealed, state

FORMATS = ("parquet", "csv", "adfa", "lidds")
FORMAT_NAMES = {"adfa": "ADFA-LD", "lidds": "LID-DS 2021"}
ADFA_FOLDERS = {"training": "Training_Data_Master", "validation": "Validation_Data_Master",
                "test": "Validation_Data_Master", "attack": "Attack_Data_Master"}
LIDDS_FOLDERS = {"training": "training", "validation": "validation", "test": "test/normal",
                 "attack": "test/normal_and_attack"}
# the normal splits as a user finds them in each layout
NORMAL_FOLDERS = {"adfa": {"training": "Training_Data_Master", "validation": "validation",
                           "test": "normal test files"},
                  "lidds": {"training": "training/", "validation": "validation/", "test": "test/normal/"}}
LIDDS_RES_HEADER = "timestamp,cpu_usage,memory_usage,network_received,network_send,storage_read,storage_written\n"
# An empty capture: the pcap global header (little-endian, v2.4, snaplen 65535, Ethernet)
EMPTY_PCAP = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_SPACE = re.compile(r"[%\s]")


class DatasetError(SensorError):
    """A trace directory or export request is unusable; the message says which and why."""


def parse_label(label: str | None) -> tuple[str, str | None]:
    """("normal", None), ("attack", NAME), or ("other", text) for any other label."""
    if label is None or label == "normal":
        return "normal", None
    if label.startswith("attack:") and label[7:]:
        return "attack", label[7:]
    return "other", label


@dataclass
class Run:
    path: Path
    meta: dict
    kind: str
    name: str | None
    split: str = ""
    outputs: list[dict] = field(default_factory=list)
    state: str = COMPLETE  # or recording, cut short: see tracerecover
    torn_lines: int = 0  # of processes.jsonl, skipped: a last line a kill cut short

    @property
    def parquet(self):
        """syscalls.parquet; of a trace not ended, a file object reading its whole segments."""
        return self.path / "syscalls.parquet" if sealed(self.meta) else open_unsealed(self.path)


def load_run(path) -> Run:
    path = Path(path)
    for f in ("syscalls.parquet", "metadata.json"):
        if not (path / f).is_file():
            raise DatasetError(f"{path}: no {f}: not a trace directory written by `sensor trace`")
    try:
        meta = json.loads((path / "metadata.json").read_text())
    except ValueError as exc:
        raise DatasetError(f"{path}/metadata.json: invalid JSON: {exc}") from None
    kind, name = parse_label(meta.get("label"))
    return Run(path, meta, kind, name, state=state(meta))


def sha256(source) -> str:
    """Of a file, by path or (an unended trace's syscalls.parquet) as a file object."""
    if isinstance(source, (str, Path)):
        return sha256_file(source)
    import hashlib

    h = hashlib.sha256()
    with source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def info(trace_dir, top: int = 10) -> dict:
    run = load_run(trace_dir)
    f = pq.ParquetFile(run.parquet)
    counts: Counter[str] = Counter()
    pids: set[int] = set()
    for batch in f.iter_batches(columns=["syscall", "pid"]):
        counts.update(batch.column("syscall").to_pylist())
        pids.update(batch.column("pid").unique().to_pylist())
    m = run.meta
    return {"path": str(run.path), "label": m.get("label"), "command": m.get("command"),
            "rows": f.metadata.num_rows, "captured": m.get("captured"), "lost": m.get("lost"),
            "duration_s": (m["end_ns"] - m["start_ns"]) / 1e9 if "end_ns" in m else None,
            "processes": len(pids), "syscalls": dict(counts.most_common(top)),
            "distinct_syscalls": len(counts), "sha256": sha256(run.parquet), "status": run.state,
            "sealed": sealed(m)}


def format_info(d: dict) -> str:
    lines = [f"{d['path']}: label {d['label']!r}, {d['rows']:,} syscalls ({d['distinct_syscalls']} distinct) "
             f"from {d['processes']} processes, {d['lost']:,} lost, {d['duration_s'] or 0:.2f} s",
             f"  command: {' '.join(d['command'] or []) or '-'}", f"  sha256: {d['sha256']}"]
    if d.get("status", COMPLETE) != COMPLETE:
        lines.append(f"  status: {d['status']}" + ("" if d["sealed"] else
                     ": rows up to about a second before now" if d["status"] == RECORDING else
                     f": rows up to about a second before the kill; `sensor trace recover {d['path']}` "
                     "adds what was parked and seals it"))
    lines += [f"  {n:>12,}  {name}" for name, n in d["syscalls"].items()]
    return "\n".join(lines)


def split_runs(runs: list[Run], train: float, validation: float, test: float, seed: int):
    """Normal runs into training/validation/test by the proportions (by run, seeded).

    Every split with a share gets at least one run while another split can spare one, so 3 runs
    at 0.7/0.15/0.15 give 1/1/1 rather than rounding validation to nothing.
    """
    if min(train, validation, test) < 0 or abs(train + validation + test - 1) > 1e-6:
        raise DatasetError(f"--train/--validation/--test must be >= 0 and add up to 1, got {train}+{validation}+{test}")
    normal = sorted((r for r in runs if r.kind == "normal"), key=lambda r: str(r.path))
    random.Random(seed).shuffle(normal)
    n = len(normal)
    counts = {"training": round(n * train)}
    counts["validation"] = min(round(n * validation), n - counts["training"])
    counts["test"] = n - counts["training"] - counts["validation"]
    for split, share in (("training", train), ("validation", validation), ("test", test)):
        donor = max(counts, key=counts.get)
        if share > 0 and counts[split] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[split] += 1
    order = [s for s in counts for _ in range(counts[s])]
    for r, split in zip(normal, order):
        r.split = split
    for r in runs:
        if r.kind != "normal":
            r.split = "attack" if r.kind == "attack" else "other"


def manifest_path(fmt: str) -> str:
    """Where the manifest goes in OUT: LID-DS's factory rejects a scenario whose first name, sorted,
    has an extension (manifest.json sorts before test/), and no LID-DS loader globs test/*.json."""
    return "test/manifest.json" if fmt == "lidds" else "manifest.json"


def _check_splits(runs: list[Run], fmt: str, shares: dict, allow_incomplete: bool) -> list[str]:
    """ADFA-LD and LID-DS need a normal run in each split: an error, or a warning when allowed."""
    counts = Counter(r.split for r in runs if r.kind == "normal")
    empty = [s for s in ("training", "validation", "test") if not counts[s]]
    if not empty:
        return []
    zero = [s for s in empty if shares[s] == 0]
    flag = {"training": "--train", "validation": "--validation", "test": "--test"}
    where = NORMAL_FOLDERS[fmt]
    why = (f"{flag[zero[0]]} 0 leaves {where[zero[0]]} empty" if zero else
           f"at least 3 normal runs, got {sum(counts.values())}")
    have = ", ".join(f"{where[s]} {counts[s]}" for s in ("training", "validation", "test"))
    msg = f"{FORMAT_NAMES[fmt]} needs a normal run in each of {', '.join(where.values())}: {why} ({have})"
    if not allow_incomplete:
        raise DatasetError(msg, hint=("give it a share" if zero else "add normal runs") + " or pass --allow-incomplete")
    if fmt == "lidds" and "test" in empty:
        msg += "; LID-DS's dataloader_factory rejects a scenario with an empty test/normal/: load it with DataLoader2021"
    return [msg + "; written anyway (--allow-incomplete)"]


def _path_words(fmt: str, out: Path) -> list[str]:
    """Loaders that classify files by words anywhere in their path misfile them under some OUTs."""
    base = str(out.resolve())
    if fmt == "adfa" and "Attack_Data_Master" in base:
        return [f"{out}: its path contains 'Attack_Data_Master': LID-DS's ADFA-LD loader would take every "
                "file for an attack; move the dataset to a path without it"]
    if fmt != "lidds":
        return []
    for folder in LIDDS_FOLDERS.values():
        want = folder.split("/")[0]
        got = next(w for w in ("training", "validation", "test") if w in f"{base}/{folder}")
        if got != want:
            return [f"{out}: its path contains {got!r}: LID-DS's DataLoader2021 files a recording under the "
                    f"first of training/validation/test in its folder path, so {folder}/ would load as "
                    f"{got}; move the scenario to a path without these words"]
    return []


def export(trace_dirs, fmt: str, out, *, train=0.7, validation=0.15, test=0.15, seed=0,
           allow_incomplete=False, syscall_table=None) -> dict:
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if syscall_table not in (None, "x86_64", "i386") or (syscall_table and fmt != "adfa"):
        raise DatasetError(f"--syscall-table {syscall_table}: x86_64 or i386, and only with --format adfa "
                           "(the other formats keep names)")
    runs = [load_run(p) for p in trace_dirs]
    if not runs:
        raise DatasetError("no trace directories given")
    out = Path(out)
    split_runs(runs, train, validation, test, seed)
    shares = {"training": train, "validation": validation, "test": test}
    skipped, warnings = [], []
    if fmt in ("adfa", "lidds"):
        skipped = [{"source": str(r.path), "label": r.meta.get("label"),
                    "reason": "label is neither `normal` nor `attack:NAME`"} for r in runs if r.kind == "other"]
        runs = [r for r in runs if r.kind != "other"]
        warnings = _check_splits(runs, fmt, shares, allow_incomplete) + _path_words(fmt, out)
    out.mkdir(parents=True, exist_ok=True)
    extra = (_adfa(runs, out, fmt, syscall_table) if fmt == "adfa" else
             {"parquet": _tabular, "csv": _tabular, "lidds": _lidds}[fmt](runs, out, fmt))
    warnings += [f"{r.path}/processes.jsonl: its torn last line was skipped (the trace was killed; "
                 "`sensor trace recover` cuts it)" for r in runs if r.torn_lines]
    manifest = {
        "format": fmt, "sensor_version": __version__, "seed": seed, "proportions": shares,
        "runs": [{"source": str(r.path), "label": r.meta.get("label"), "split": r.split,
                  "captured": r.meta.get("captured"), "lost": r.meta.get("lost"),
                  "sha256": sha256(r.parquet), "outputs": r.outputs,
                  **({"torn_lines": r.torn_lines} if r.torn_lines else {})} for r in runs],
        "skipped": skipped, "warnings": warnings, **(extra or {}),
    }
    (out / manifest_path(fmt)).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _record(run: Run, out: Path, path: Path, **extra):
    run.outputs.append({"path": str(path.relative_to(out)), "sha256": sha256(path), **extra})


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _tabular(runs: list[Run], out: Path, fmt: str):
    """One table of every run's rows, with run, label and split columns added.

    Runs captured with and without --args have different columns: the union is written, a
    column a run lacks is null there.
    """
    fields: dict[str, pa.DataType] = {}
    for r in runs:
        for f in pq.read_schema(r.parquet):
            fields.setdefault(f.name, _plain(f.type))
    schema = pa.schema(list(fields.items()) + [("run", pa.string()), ("label", pa.string()),
                                               ("split", pa.string())])
    target = out / f"dataset.{fmt}"
    writer = (pq.ParquetWriter(target, schema, compression="zstd") if fmt == "parquet"
              else pacsv.CSVWriter(target, schema))
    try:
        for r in runs:
            extra = {"run": r.path.name, "label": r.meta.get("label"), "split": r.split}
            for batch in pq.ParquetFile(r.parquet).iter_batches():
                n = batch.num_rows
                cols = []
                for f in schema:
                    if f.name in extra:
                        cols.append(pa.array([extra[f.name]] * n, f.type))
                    elif f.name in batch.schema.names:
                        cols.append(batch.column(f.name).cast(f.type))
                    else:
                        cols.append(pa.nulls(n, f.type))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    finally:
        writer.close()
    digest = sha256(target)
    for r in runs:
        r.outputs.append({"path": target.name, "sha256": digest})


def _per_process(run: Run) -> dict[int, list[int]]:
    """Syscall numbers per process, in time order (threads of a process interleaved by time)."""
    t = pq.read_table(run.parquet, columns=["timestamp_ns", "pid", "syscall_nr"]).sort_by("timestamp_ns")
    out: dict[int, list[int]] = {}
    for pid, nr in zip(t["pid"].to_pylist(), t["syscall_nr"].to_pylist()):
        out.setdefault(pid, []).append(nr)
    return out


def _processes(run: Run) -> int:
    return pc.count_distinct(pq.read_table(run.parquet, columns=["pid"])["pid"]).as_py()


def _adfa(runs: list[Run], out: Path, fmt: str, table: str | None = None) -> dict:
    """ADFA-LD: one file per process trace, one line of space-separated syscall numbers.

    With table i386 our x86_64 calls are written with ADFA-LD's own numbers, mapped by name
    (sensor/i386.py); a call i386 lacks is left out and counted under `unmapped` in the manifest.
    """
    from .i386 import to_i386

    mapping = to_i386() if table == "i386" else None
    names = syscalls.table("x86_64")
    unmapped: Counter[str] = Counter()
    dirs = ADFA_FOLDERS
    for d in set(dirs.values()):
        (out / d).mkdir(parents=True, exist_ok=True)
    # loaders sort names as text: UVD-10000 would sort before UVD-1001, so widen past 9999 files
    files = Counter()
    for r in runs:
        if r.split != "attack":
            files[dirs[r.split]] += _processes(r)
    width = {d: max(4, len(str(files[d]))) for d in dirs.values()}
    counters = Counter()
    attack_runs: Counter[str] = Counter()
    # validation before test: loaders take the first N of Validation_Data_Master, sorted
    for split in ("training", "validation", "test", "attack"):
        for r in (r for r in runs if r.split == split):
            if split == "attack":
                name = re.sub(r"[^A-Za-z0-9_]", "_", r.name)
                attack_runs[name] += 1
                folder = out / dirs[split] / f"{name}_{attack_runs[name]}"
                folder.mkdir(parents=True, exist_ok=True)
            for pid, nrs in sorted(_per_process(r).items()):
                counters[split] += 1
                if split == "attack":
                    counters["all"] += 1
                    path = folder / f"UAD-{name.replace('_', '-')}-{attack_runs[name]}-{counters['all']}.txt"
                elif split == "training":
                    path = out / dirs[split] / f"UTD-{counters[split]:0{width[dirs[split]]}d}.txt"
                else:
                    n = counters["validation"] + counters["test"]
                    path = out / dirs[split] / f"UVD-{n:0{width[dirs[split]]}d}.txt"
                if mapping is not None:
                    unmapped.update(names.get(nr, f"syscall_{nr}") for nr in nrs if mapping.get(nr) is None)
                    nrs = [mapping[nr] for nr in nrs if mapping.get(nr) is not None]
                path.write_text(" ".join(map(str, nrs)) + " \n")
                _record(r, out, path, pid=pid, syscalls=len(nrs))
    # DataLoaderADFALD(OUT, attack, val_count, val_train_add) with these finds our split
    return {"loader": {"val_count": counters["validation"], "val_train_add": 0},
            "syscall_table": table or "x86_64", **({"unmapped": dict(unmapped)} if mapping is not None else {})}


def _lidds_value(v) -> str:
    # the loader splits a line on single spaces after stripping trailing whitespace: no value may
    # hold any whitespace (a tab ending the last value would be cut off), nor a bare %
    return _SPACE.sub(lambda m: quote(m.group(), safe=""), str(v))


def _uids(run: Run) -> dict[int, int]:
    """pid -> user id from processes.jsonl; a last line a kill cut short is skipped and counted."""
    uids = {}
    procs = run.path / "processes.jsonl"
    if procs.exists():
        data = procs.read_bytes()
        lines = data.splitlines()
        for n, line in enumerate(lines, 1):
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if n == len(lines) and not data.endswith(b"\n"):
                    run.torn_lines += 1
                    continue
                raise DatasetError(f"{procs}:{n}: invalid JSON: {exc}") from None
            p = e.get("process", {})
            uid = (p.get("user") or {}).get("id") or (e.get("user") or {}).get("id")
            if uid is not None:
                uids[p["pid"]] = int(uid)
    return uids


def _lidds(runs: list[Run], out: Path, fmt: str):
    """LID-DS 2021: a scenario of zipped recordings (.sc, .json, .res, .pcap) per split."""
    folders = LIDDS_FOLDERS
    for folder in folders.values():
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(sorted(runs, key=lambda r: (r.split, str(r.path))), 1):
        name = f"{re.sub(r'[^A-Za-z0-9]+', '_', r.path.name).strip('_') or 'run'}_{i}"
        target = out / folders[r.split] / f"{name}.zip"
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
            with z.open(f"{name}.sc", "w") as sc:
                _lidds_lines(r, sc)
            # the loader turns every ' into " before parsing: keep none in the text
            z.writestr(f"{name}.json", json.dumps(_lidds_json(r)).replace("'", "\\u0027"))
            z.writestr(f"{name}.res", LIDDS_RES_HEADER)
            z.writestr(f"{name}.pcap", EMPTY_PCAP)
        _record(r, out, target, recording=name)


def _lidds_lines(r: Run, sc):
    """Each call as an entry line (`>`, with its arguments) and an exit line (`<`, res=)."""
    uids = _uids(r)
    t = pq.read_table(r.parquet)
    cols = set(t.column_names)
    rows = []
    for row in t.to_pylist():
        comm = _lidds_value(row["comm"] or "?")
        head = (row["pid"], comm, row["tid"], row["syscall"])
        params = []
        for key in ("fd", "path", "path2", "addr", "flags"):
            if key in cols and row[key] is not None:
                params.append(f"{key}={_lidds_value(row[key])}")
        rows.append((row["timestamp_ns"], 0, head, ">", params))
        if row["duration_ns"] or row["syscall"] not in ("exit", "exit_group"):
            rows.append((row["timestamp_ns"] + row["duration_ns"], 1, head, "<", [f"res={row['ret']}"]))
    rows.sort(key=lambda x: (x[0], x[1]))
    for ts, _, (pid, comm, tid, name), direction, params in rows:
        line = " ".join([str(ts), str(uids.get(pid, 0)), str(pid), comm, str(tid), name, direction, *params])
        sc.write(line.encode() + b"\n")


def _lidds_json(r: Run) -> dict:
    m = r.meta
    start = m.get("start_ns", 0) / 1e9
    attack = r.kind == "attack"
    exploit_at = m.get("attack_start_ns", m.get("start_ns", 0)) / 1e9
    containers = [{"ip": "127.0.0.1", "name": "traced", "role": "normal"}]
    if attack:
        containers.append({"ip": "127.0.0.1", "name": "attacker", "role": "attacker"})
    return {
        "container": containers, "exploit": attack, "exploit_name": r.name if attack else "",
        "image": (m.get("command") or ["unknown"])[0],
        "recording_time": round((m.get("end_ns", 0) - m.get("start_ns", 0)) / 1e9),
        "time": {"container_ready": {"absolute": start, "source": "sensor"},
                 "warmup_end": {"absolute": start, "source": "sensor"},
                 "exploit": [{"absolute": exploit_at, "name": r.name, "source": "sensor"}] if attack else []},
    }


def run(args) -> int:
    if args.dataset_command == "info":
        d = info(args.trace_dir)
        print(json.dumps(d, indent=2) if args.json else format_info(d))
        return 0
    if args.from_store or not args.trace_dirs:
        if args.trace_dirs or not args.from_store:
            raise DatasetError("give TRACE_DIRs or --from-store DATA_DIR, not both" if args.trace_dirs
                               else "no trace directories given (or --from-store DATA_DIR)")
        from .learn.store_export import export as export_store

        m = export_store(args.from_store, args.format, args.output)
        print(f"sensor dataset: {sum(t['rows'] for t in m['tables']):,} events of {args.from_store} -> "
              f"{len(m['tables'])} tables in {args.output} ({', '.join(t['path'] for t in m['tables'])}); "
              "manifest.json written")
        return 0
    m = export(args.trace_dirs, args.format, args.output, train=args.train, validation=args.validation,
               test=args.test, seed=args.seed, allow_incomplete=args.allow_incomplete,
               syscall_table=getattr(args, "syscall_table", None))
    for w in m["warnings"]:
        print(f"sensor: warning: {w}", file=sys.stderr)
    n = sum(len(r["outputs"]) for r in m["runs"])
    print(f"sensor dataset: {len(m['runs'])} runs -> {n} files in {args.output} ({args.format}); "
          f"{manifest_path(args.format)} written"
          + (f"; {len(m['skipped'])} runs skipped (see manifest)" if m["skipped"] else ""))
    return 0
