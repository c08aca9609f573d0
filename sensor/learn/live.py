"""`sensor run --model`: the syscalls of every process that execs after the sensor starts, traced by
`sensor trace`'s kernel programs, scored by the model when the process exits (and every
model.interval seconds while it runs); a score over the model's threshold is an alert."""
from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from .. import __version__, syscalls, wire
from ..errors import ConfigError
from ..filehash import sha256_file
from ..processes import ProcessTable
from ..records import ProcessExec, ProcessExit, ProcessFork
from ..rules import SEVERITY
from ..schema import text
from . import modelfile
from .runs import Process

log = logging.getLogger("sensor.model")
# An exit's last syscall batches reach the ring at the task's last switch: wait this long for them.
GRACE_S = 0.3
LEVEL = "high"


def rule_id(method: str) -> str:
    """The anomaly rule's id: the same for every model of a method, so policies can name it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sensor.model.{method}"))


class Calls:
    """One process's syscall records (enter time, number, return, duration), in arrival batches."""

    __slots__ = ("batches", "n", "scored_n", "alerted")

    def __init__(self):
        self.batches: list[np.ndarray] = []
        self.n = self.scored_n = 0
        self.alerted = False

    def add(self, recs: np.ndarray):
        self.batches.append(recs)
        self.n += len(recs)

    def records(self) -> np.ndarray:
        r = np.concatenate(self.batches) if len(self.batches) > 1 else self.batches[0]
        self.batches = [r]
        return r[np.argsort(r["enter_ns"], kind="stable")]


class ModelSource:
    """A source that makes no events of its own: it hands anomaly alerts to `raise_alert` (the
    pipeline's, so they are stored, notified and responded to like Sigma alerts)."""

    name = "model"
    module = "sensor"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, cfg, host, raise_alert):
        from .. import backend

        if backend.NAME != "linux":  # ETW gives no per-process syscall sequence to score
            raise ConfigError(f"model: syscall models run on Linux (eBPF) only, not on {backend.NAME}")
        path = cfg["model"]
        self.doc, self.model = modelfile.load(path)
        self.path, self.sha256 = str(path), sha256_file(path)
        self.method, self.threshold = self.doc["method"], float(self.doc["threshold"])
        self.interval, self.max_calls = cfg["model.interval"], cfg["model.max_calls"]
        self.ring_buffer_bytes = ring = cfg["model.ring_buffer_bytes"]
        if ring & (ring - 1) or ring < 4096:
            raise ConfigError(f"model.ring_buffer_bytes: {ring} is not a power of two of at least 4KiB")
        if self.interval <= 0 or self.max_calls < 64:
            raise ConfigError("model.interval must be > 0 and model.max_calls at least 64")
        self.raise_alert = raise_alert
        self.table = ProcessTable(host)
        self.names = np.array(syscalls.names_array(), dtype=object)
        self.live: dict[int, Calls] = {}
        self.comms: dict[int, str] = {}
        self.ending: dict[int, tuple[float, int, Calls, dict]] = {}  # pid -> (due, exit ts, calls, exit event)
        self.counts = {"scored": 0, "alerts": 0, "segments": 0, "armed": 0}
        self.procs = self.syscalls = None
        self._next_periodic = time.monotonic() + self.interval
        self._final = False

    def start(self):
        from ..linux.process import ProcessSource
        from ..linux.syscall import SyscallSource

        self.table.seed()
        self.procs = ProcessSource(only_traced=True, follow_forks=True).start()
        try:
            self.syscalls = SyscallSource(self.procs.trace_maps(), ring_buffer_bytes=self.ring_buffer_bytes).start()
        except BaseException:
            self.procs.close()
            raise
        # Every process there now is armed: traced from its next exec, its new children from
        # their fork (the kernel adds them), as `sensor trace` traces a command. Not the sensor,
        # and not kernel threads (no syscalls).
        traced, armed = self.procs.traced(), bytes([wire.TRACE_ARMED])
        for pid, proc in list(self.table.live.items()):
            if pid in self.table.sensor_pids or pid == 2 or proc.ppid == 2:
                continue
            try:
                traced.update(pid, armed)
                self.counts["armed"] += 1
            except OSError as exc:  # the map is full (65,536): the rest go unwatched, said once
                log.warning("model: %d processes armed, the rest are not traced: %s", self.counts["armed"], exc)
                break
        log.info("model %s (%s, threshold %.4g) scores processes that exec from now on",
                 self.path, self.method, self.threshold)
        return self

    def fileno(self):
        return None  # read every poll_interval: exits wait GRACE_S anyway

    def poll(self) -> list:
        records = []
        while True:
            got = self.procs.poll()
            records += got
            if len(got) < 1 << 16:
                break
        while len(batch := self.syscalls.poll()):
            self._add(batch)
        now = time.monotonic()
        for r in records:
            self._process_record(r, now)
        for pid in [pid for pid, e in self.ending.items() if e[0] <= now or self._final]:
            _, _, calls, event = self.ending.pop(pid)
            self._score(pid, calls, event["process"], event.get("user"), self.comms.pop(pid, None), partial=False)
        periodic = self._final or now >= self._next_periodic
        if periodic:
            self._next_periodic = now + self.interval
        for pid, calls in list(self.live.items()):
            if calls.n > calls.scored_n and (periodic or calls.n >= self.max_calls):
                self._score_live(pid, calls)
        return []

    def _add(self, batch: np.ndarray):
        batch = batch[np.argsort(batch["pid"], kind="stable")]
        pids, first = np.unique(batch["pid"], return_index=True)
        for pid, part in zip(pids.tolist(), np.split(batch, first[1:])):
            ending = self.ending.get(pid)
            if ending is not None:  # the exited process's last calls, or a new one with its pid
                late = part["enter_ns"] <= ending[1]
                if late.any():
                    ending[2].add(part[late])
                part = part[~late]
                if not len(part):
                    continue
            calls = self.live.get(pid)
            if calls is None:
                calls = self.live[pid] = Calls()
            calls.add(part)

    def _process_record(self, r, now: float):
        event = self.table.handle(r)
        if isinstance(r, ProcessExec):
            self.comms[r.pid] = text(r.comm)[0]
        elif isinstance(r, ProcessFork) and not r.thread:
            self.comms[r.child_pid] = self.comms.get(r.pid) or text(r.comm)[0]
        elif isinstance(r, ProcessExit):
            self.comms[r.pid] = text(r.comm)[0]
            calls = self.live.pop(r.pid, None)
            if calls is None:
                self.comms.pop(r.pid, None)  # armed, never exec'd: nothing traced
            elif event is not None:
                self.ending[r.pid] = (now + GRACE_S, r.ts_ns, calls, event)

    def _score_live(self, pid: int, calls: Calls):
        proc = self.table.find(pid)
        process = proc.ecs(self.table.host) if proc else {"pid": pid}
        user = {"id": str(proc.euid)} if proc and proc.euid is not None else None
        self._score(pid, calls, process, user, self.comms.get(pid), partial=True)
        if calls.n >= self.max_calls:
            # a segment is scored: keep the last windows' calls, so windows across the cut count
            recs = calls.records()
            calls.batches, calls.n = [recs[-8:]], min(len(recs), 8)
            self.counts["segments"] += 1
        calls.scored_n = calls.n

    def _score(self, pid: int, calls: Calls, process: dict, user: dict | None, comm: str | None, partial: bool):
        if calls.alerted or not calls.n:
            return
        r = calls.records()
        p = Process(str(pid), comm or "?", self.names[np.minimum(r["nr"], len(self.names) - 1)].tolist(),
                    r["enter_ns"], r["ret"], r["duration_ns"], process.get("parent", {}).get("pid"))
        result = self.model.score_processes([p])[0]
        self.counts["scored"] += 1
        if result["score"] > self.threshold:
            calls.alerted = True  # one alert per process
            self.counts["alerts"] += 1
            self.raise_alert(self.alert(result, process, user, partial))

    def alert(self, result: dict, process: dict, user: dict | None, partial: bool) -> dict:
        program = result["program"] or process.get("name") or "?"
        title = f"Process unlike the normal ones of the model ({self.method})"
        out = {
            "event": {"kind": "alert", "category": ["process"], "type": ["info"], "action": "model-anomaly",
                      "dataset": "alert", "module": "model", "severity": SEVERITY[LEVEL],
                      "reason": f"{title}: {program} scored {result['score']:.4g} > {self.threshold:.4g}"},
            "rule": {"id": rule_id(self.method), "name": title, "author": f"sensor {__version__}",
                     "level": LEVEL, "ruleset": "model", "category": "process",
                     "description": "The process's syscalls score over the threshold a `sensor model train` "
                                    "chose on normal runs (docs/ml.md)."},
            "process": process,
            "sensor": {"model": {"method": self.method, "score": result["score"], "threshold": self.threshold,
                                 "sha256": self.sha256, "path": self.path, "program": program,
                                 "program_seen": result["program_seen"], "calls": result["calls"],
                                 "while_running": partial, "top": result["top"]}},
        }
        if user:
            out["user"] = user
        return out

    def stats(self) -> dict:
        lost = (self.syscalls.lost() if self.syscalls else 0) + \
            (self.procs.stats()["lost_kernel"] if self.procs and self.procs._obj else 0)
        queued = sum(s.queue_bytes() for s in (self.procs, self.syscalls) if s is not None and s._rb)
        return {"lost_kernel": lost, "lost_user": 0, "queue_bytes": queued, **self.counts,
                "processes": len(self.live)}

    def detach(self):
        """Stops tracing; the next poll reads what is queued and scores every process left."""
        for s in (self.syscalls, self.procs):
            if s is not None:
                s.detach()
        self._final = True

    def close(self):
        for s in (self.syscalls, self.procs):
            if s is not None:
                s.close()
