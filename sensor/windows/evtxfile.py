"""Records of .evtx files, read with the `evtx` package (the Rust evtx crate): a damaged chunk is
reported with its file and number and skipped, and reading goes on with the next one."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import orjson

from .winevent import WinEvent, from_evtx

_CHUNK = re.compile(r"chunk number (\d+)")
FILE_HEADER, CHUNK = 4096, 65536  # the file header block, then chunks of 64 KiB


@dataclass
class Problem:
    path: str
    chunk: int | None  # None: the file as a whole (not an .evtx, unreadable)
    reason: str

    def __str__(self):
        where = f"chunk {self.chunk}" if self.chunk is not None else "file"
        return f"{self.path}: {where}: {self.reason}"


@dataclass
class EvtxFile:
    path: Path
    records: int = 0
    problems: list[Problem] = field(default_factory=list)

    def events(self) -> Iterator[WinEvent]:
        try:
            from evtx import PyEvtxParser
        except ImportError:
            from ..errors import SensorError

            raise SensorError("reading .evtx files needs the evtx package", hint="pip install evtx") from None
        try:
            parser = PyEvtxParser(str(self.path))
        except (OSError, RuntimeError) as exc:  # not an .evtx (bad file header), unreadable
            self.problems.append(Problem(str(self.path), None, _reason(exc)))
            return
        it = parser.records_json()
        while True:
            try:
                rec = next(it)
            except StopIteration:
                self._check_end()
                return
            except (RuntimeError, OSError) as exc:  # the crate skips to the next chunk after this
                msg = str(exc)
                m = _CHUNK.search(msg)
                self.problems.append(Problem(str(self.path), int(m.group(1)) if m else None, _reason(exc)))
                if m is None and not self.problems[-1].reason:
                    return
                continue
            try:
                ev = from_evtx(orjson.loads(rec["data"]), rec.get("event_record_id"))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.problems.append(Problem(str(self.path), None, f"record {rec.get('event_record_id')}: {exc}"))
                continue
            self.records += 1
            yield ev


    def _check_end(self):
        """The crate stops silently before a last chunk the file ends inside: say so."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        partial = (size - FILE_HEADER) % CHUNK if size > FILE_HEADER else 0
        if partial:
            self.problems.append(Problem(str(self.path), (size - FILE_HEADER) // CHUNK,
                                         f"cut short: the file ends {partial:,} bytes into this {CHUNK:,}-byte "
                                         "chunk; its records are not read"))


def _reason(exc: Exception) -> str:
    """The crate's message without its location prefix, on one line."""
    msg = " ".join(str(exc).split())
    msg = re.sub(r"^Failed to parse chunk number \d+: ", "", msg)
    msg = msg.replace("Failed to parse chunk header: ", "")
    return msg[:300]


def find(paths) -> list[Path]:
    """The .evtx files among `paths`, folders searched recursively, in a stable order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.suffix.lower() == ".evtx" and x.is_file())
        else:
            out.append(p)
    return out
