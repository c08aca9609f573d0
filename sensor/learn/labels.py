"""Labels of a whole host's recording: the run label (`labels.run`), DATA_DIR/labels.jsonl windows,
DATA_DIR/runs.jsonl (each `sensor run`'s label and config), and `sensor label add|list`."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import orjson

from .. import __version__
from ..backend import system
from ..errors import SensorError
from ..schema import parse_time, rfc3339

LABEL = re.compile(r"normal|attack:[A-Za-z0-9][A-Za-z0-9_.-]*")
UNLABELLED = "unlabelled"
WINDOWS_FILE, RUNS_FILE = "labels.jsonl", "runs.jsonl"
_SECRET = re.compile(r"password", re.I)


class LabelError(SensorError):
    """A label, a window or the label file is unusable; the message says which and why."""


def check_label(label: str) -> str:
    if not LABEL.fullmatch(label or ""):
        raise LabelError(f"label {label!r}: expected normal or attack:NAME (NAME: letters, digits, . _ -)")
    return label


def parse_when(value: str, flag: str) -> int:
    """`now`, an age (10m: that long ago), Unix seconds or RFC 3339, as epoch ns (as `events --since`)."""
    if value.strip() == "now":
        return time.time_ns()
    from ..cli import parse_since

    try:
        return parse_since(value)
    except SensorError:
        raise LabelError(f"{flag} {value!r}: expected now, an age (10m, 2h), Unix seconds or an RFC 3339 "
                         "time such as 2026-11-24T10:00:00Z") from None


def _append(path: Path, record: dict):
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | system.OPEN_FLAGS, 0o600)
    with open(fd, "ab") as f:
        f.write(orjson.dumps(record) + b"\n")  # one write: concurrent appends never interleave


def add_window(data_dir, start_ns: int, end_ns: int, label: str) -> dict:
    check_label(label)
    if start_ns >= end_ns:
        raise LabelError(f"window {rfc3339(start_ns)} .. {rfc3339(end_ns)}: --from must be before --to")
    w = {"from": rfc3339(start_ns), "to": rfc3339(end_ns), "label": label, "added": rfc3339(time.time_ns())}
    _append(Path(data_dir) / WINDOWS_FILE, w)
    return w


def _records(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LabelError(f"{path}: cannot read: {exc.strerror}") from None
    out = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise LabelError(f"{path}:{n}: invalid JSON: {exc}") from None
    return out


def windows(data_dir) -> list[dict]:
    """The windows in the order added (a later one wins where they overlap), each checked."""
    path = Path(data_dir) / WINDOWS_FILE
    out = _records(path)
    for n, w in enumerate(out, 1):
        try:
            w["from_ns"], w["to_ns"] = parse_time(w["from"]), parse_time(w["to"])
            check_label(w["label"])
        except (KeyError, TypeError, ValueError, LabelError) as exc:
            raise LabelError(f"{path}: window {n}: {exc}: expected from, to (RFC 3339) and label") from None
    return out


def runs(data_dir) -> list[dict]:
    return _records(Path(data_dir) / RUNS_FILE)


def record_run(cfg) -> None:
    """Notes a `sensor run`'s start, label and config (secrets left out) for dataset manifests."""
    config = {k: ("(set)" if _SECRET.search(k) and v is not None else v) for k, v in cfg.items()}
    try:
        _append(Path(cfg["data_dir"]) / RUNS_FILE, {"started": rfc3339(time.time_ns()), "label": cfg.get("label"),
                                                    "sensor_version": __version__, "config": config})
    except OSError as exc:
        print(f"sensor: warning: cannot note this run in {cfg['data_dir']}/{RUNS_FILE}: {exc.strerror}",
              file=sys.stderr)


def add_arguments(sub, default_data_dir: str):
    la = sub.add_parser("label", help="label time windows of the stored events (attack, normal)")
    lsub = la.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    add = lsub.add_parser("add", help="append a window to DATA_DIR/labels.jsonl")
    add.add_argument("label", metavar="LABEL", help="normal or attack:NAME")
    add.add_argument("--from", dest="start", required=True, metavar="TIME",
                     help="now, an age (10m: ten minutes ago), Unix seconds, or RFC 3339")
    add.add_argument("--to", dest="end", default="now", metavar="TIME", help="the same forms (default: now)")
    ls = lsub.add_parser("list", help="the windows, in the order added")
    ls.add_argument("--json", action="store_true", help="one JSON object per window")
    for p in (add, ls):
        p.add_argument("--data-dir", default=default_data_dir)


def run(args) -> int:
    if args.label_command == "add":
        w = add_window(args.data_dir, parse_when(args.start, "--from"), parse_when(args.end, "--to"), args.label)
        print(f"sensor label: {w['from']} .. {w['to']} {w['label']} added to "
              f"{Path(args.data_dir) / WINDOWS_FILE}", file=sys.stderr)
        return 0
    ws = windows(args.data_dir)
    for w in ws:
        if args.json:
            print(orjson.dumps({k: w[k] for k in ("from", "to", "label", "added") if k in w}).decode())
        else:
            print(f"{w['from']}  {w['to']}  {w['label']}")
    if not args.json:
        print(f"({len(ws)} windows in {Path(args.data_dir) / WINDOWS_FILE})", file=sys.stderr)
    return 0
