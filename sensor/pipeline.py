"""The one pipeline: sources -> normalize (process cache) -> stamp -> sinks, plus health."""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from operator import itemgetter

import psutil

from pathlib import Path

from . import backend
from .config import Config
from .errors import ConfigError, SensorError
from .host import Host
from .processes import ProcessTable
from .rules import alert
from .source import BLOCK, PROCESS_TABLE, WATCH_PTRACE, having
from .schema import Stamper
from .store import Store

log = logging.getLogger("sensor.pipeline")
# Above this rate the loop batches its reads (batch_interval); an exec makes three records.
# It goes back to reading at once below half of it: a storm on a loaded machine comes in bursts,
# and one thin 0.1 s window would otherwise switch batching off (hundreds of reads a second).
BUSY_RECORDS_PER_S = 1500


_TIME = itemgetter(0)  # of the (ts_ns, module, record) a drain sorts


def build_sources(cfg: Config, blocked=None) -> list:
    """The sources this platform and config ask for, not yet started; `blocked`: the (dev, inode,
    path) of files a block-exec policy lists, or None without one."""
    return backend.build_sources(cfg, blocked)


def _items(spec: str | None) -> list[str]:
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def load_rules(spec: str, skip_invalid: bool = False):
    """The RuleSet named by the `rules` option, or None for `none`."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if not items or items == ["none"]:
        return None
    from .rules import BUILTIN

    paths = [BUILTIN if x == "builtin" else Path(x) for x in items if x != "none"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"rules: no such file or directory: {', '.join(missing)}")
    rules = backend.rule_set().load_for_run(paths, skip_invalid)  # Windows: SigmaHQ's Windows rules too
    log.info("loaded %d Sigma rules (%d unsupported or broken, see warnings)", len(rules.rules),
             sum(r.status != "ok" for r in rules.reports))
    return rules


class Pipeline:
    def __init__(self, cfg: Config, sources: list | None = None):
        self.cfg = cfg
        self.host = Host()
        self.stamper = Stamper(self.host, label=cfg.get("label"))
        self.table = ProcessTable(self.host)
        self.policies = self.responder = None
        blocked = None
        if cfg["response_policy"]:
            from .respond import Responder, load

            from .quarantine import Quarantine

            self.policies = load(cfg["response_policy"])
            self.responder = Responder(self.policies, self.host.boot_offset_ns, Quarantine(cfg["data_dir"]))
            if any(p.action == "block-exec" for p in self.policies.rules):
                blocked = self.policies.blocked_files()
        self.sources = build_sources(cfg, blocked) if sources is None else sources
        if cfg.get("model"):  # syscalls scored by a model: its own kernel programs, only when asked
            from .learn.live import ModelSource

            self.sources = [*self.sources, ModelSource(cfg, self.host, self.raise_alert)]
        self.notifier = None
        if cfg["notifiers"]:
            from .notify import load as load_notifiers

            self.notifier = load_notifiers(cfg["notifiers"])
        from .fleet.azure_upload import uploader_from_config

        self.uploader = uploader_from_config(cfg, self.host.id)
        hooks = {"on_closed": self.uploader.closed, "on_delete": self.uploader.deleting} if self.uploader else {}
        self.store = Store(cfg["data_dir"], **cfg.section("store"), **hooks)
        self.sinks = [self.store.write]
        self.housekeeping: list = []  # called once a loop, between batches (e.g. a SIGHUP's reload)
        self.csv = None
        unknown = set(_items(cfg["sink"])) - {"store", "csv", "nats"}
        if unknown:
            raise ConfigError(f"sink: unknown {', '.join(sorted(unknown))} (use store, csv, nats)")
        if "csv" in _items(cfg["sink"]):
            from .csvsink import CsvSink

            self.csv = CsvSink(Path(cfg["data_dir"]) / "csv", **cfg.section("csv"))
            self.sinks.append(self.csv.write)
        self.nats = None
        if "nats" in _items(cfg["sink"]):
            from .fleet.nats_sink import sink_from_config

            self.nats = sink_from_config(cfg)
            self.sinks.append(self.nats.write)
        self.rules = load_rules(cfg["rules"], cfg["rules_skip_invalid"])
        self.hasher = None
        if cfg["files.enabled"] and cfg["files.hash"]:
            from .filehash import ExecutableHasher

            self.hasher = ExecutableHasher(cfg["files.hash_max_bytes"], cfg["files.hash_per_second"])
        self.emitted: Counter[str] = Counter()
        self.fallbacks: dict[str, str] = {}  # source -> why it could not start (sensor.health)
        self.started = time.monotonic()
        self._proc = psutil.Process()
        self._cpu_mark = (self.started, self._cpu_seconds())
        self._closed = False

    def emit(self, event: dict, boot_ns: int | None = None):
        ev = event["event"]
        if self.hasher is not None and "file" in ev.get("category", ()):
            self.hasher.annotate(event)
        self.stamper.stamp(event, boot_ns)
        self.emitted[ev.get("dataset", "")] += 1
        for sink in self.sinks:
            sink(event)
        if ev.get("kind") == "alert":
            if self.notifier is not None:
                self.notifier.submit(event)
            return
        if self.responder is not None and ev.get("action") == "exec":
            blocked = self.responder.on_exec(event, self._block)
            if blocked is not None:
                self.emit(blocked)
        if self.rules is not None:
            for rule in self.rules.match(event):
                self.raise_alert(alert(rule, event))

    def raise_alert(self, a: dict):
        """An alert, a Sigma rule's or one made outside the rule engine (sensor.learn.live):
        stored, notified and responded to."""
        self.emit(a)
        if self.responder is not None:
            for response in self.responder.respond(a):
                self.emit(response)

    def _block(self, dev: int, ino: int, path: str | None = None):
        for s in having(self.sources, BLOCK):
            s.block(dev, ino, path)

    def _drain(self, timers: bool = True) -> int:
        """Reads every source (with `timers` false, only those with an fd) until each has caught
        up. Kernel records of one round are handled in time order across sources: a file written
        then executed, or a process that execs then connects, reaches the process cache in the
        order it happened, whichever ring it took."""
        n = 0
        sources = self.sources if timers else [s for s in self.sources if s.fileno() is not None]
        while True:
            batch, full = [], False
            for source in sources:
                records = source.poll()
                full = full or len(records) >= 1 << 16
                n += len(records)
                module = source.module
                for rec in records:
                    if isinstance(rec, dict):  # portable sources hand over finished events
                        self.emit(rec)
                    else:
                        batch.append((rec.ts_ns, module, rec))
            batch.sort(key=_TIME)
            for ts_ns, module, rec in batch:
                event = self.table.handle(rec)
                if event is not None:
                    event["event"]["module"] = module
                    self.emit(event, ts_ns)
            if not full:
                return n

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def health(self, final: bool = False) -> dict:
        now, cpu = time.monotonic(), self._cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        sources = {}
        for s in self.sources:
            st = s.stats()
            sources[s.name] = {"emitted": self.emitted[s.name], **st}
        return {
            "uptime_s": round(now - self.started, 3),
            "final": final,
            "sources": sources,
            **({"fallbacks": dict(self.fallbacks)} if self.fallbacks else {}),
            "store": {"written": self.store.written, "dropped": self.store.dropped,
                      **({"error": self.store.last_error} if self.store.last_error else {})},
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100 * (cpu - cpu_then) / max(now - then, 1e-9), 2),
            "rss_bytes": self._proc.memory_info().rss,
            **({"notify": dict(self.notifier.stats)} if self.notifier is not None else {}),
            **({"nats": self.nats.stats()} if self.nats is not None else {}),
            **({"upload": self.uploader.stats()} if self.uploader is not None else {}),
            **({"hashes": dict(self.hasher.stats)} if self.hasher is not None else {}),
            **({"rules": self.rules.stats()} if self.rules is not None else {}),
        }

    def emit_health(self, final: bool = False) -> dict:
        h = self.health(final)
        self.emit({"event": {"kind": "metric", "category": ["host"], "type": ["info"],
                             "action": "health", "dataset": "sensor.health", "module": "sensor"},
                   "sensor": {"health": h}})
        return h

    def start(self):
        if self.notifier is not None:
            self.notifier.start()
        if self.uploader is not None:
            self.uploader.start()
        self.table.seed()
        for s in having(self.sources, PROCESS_TABLE):
            s.process_table(self.table)
        started = []
        try:
            for s in self.sources:
                try:
                    s.start()
                except SensorError as exc:
                    s = self._fallback(s, exc)
                    if s is None:
                        continue
                    s.start()
                started.append(s)
            self.sources = started
            names = {s.name for s in started}
            if "security" not in names:  # else ptrace at the sensor comes with the security records
                for s in having(started, WATCH_PTRACE):
                    s.watch_ptrace()
        except BaseException:
            for s in started:
                s.close()
            self.store.close()
            if self.uploader is not None:
                self.uploader.close(0)
            raise
        # What start-up built (rules, modules, the seeded process table) lives as long as the
        # sensor: frozen, the collector's full passes skip it (11 ms a pass with the builtin
        # rules alone, more with large rule sets). An exec storm's young collections are
        # unchanged by it: 2.6 us per exec either way (bench/replay.py).
        gc.collect()
        gc.freeze()
        return self

    def _fallback(self, source, exc: SensorError):
        """The portable backend for a kernel source that could not start (no BTF, no root, no
        tracefs), when its backend is `auto`; otherwise the error stands."""
        if isinstance(exc, ConfigError):  # the user's mistake: no backend would do better
            raise exc
        reason = str(exc).splitlines()[0]
        try:
            replacement = backend.fallback(source, reason, self.cfg)
        except LookupError:
            raise exc from None
        self.fallbacks[source.name] = reason
        return replacement

    def run(self, stop: threading.Event, duration: float | None = None, on_health=None):
        """Runs until `stop` is set or `duration` seconds pass; then drains and closes."""
        cfg = self.cfg
        ep = backend.poller()
        for s in self.sources:
            if s.fileno() is not None:  # timer-driven sources are polled every poll_interval
                ep.register(s.fileno())
        deadline = time.monotonic() + duration if duration else None  # from when events flow, not from start-up
        interval, poll, batch = cfg["health_interval"], cfg["poll_interval"], cfg["batch_interval"]
        next_health = time.monotonic() + interval
        next_timers = last_drain = window_start = 0.0
        busy, window_n = False, 0
        try:
            while not stop.is_set():
                ep.poll(poll)
                # Under load, read at most every batch_interval: each wakeup costs the sensor a
                # switch and a cold cache (an exec storm woke the loop once per exec; at 5 ms it
                # read ~25 records a wakeup, at 50 ms ~250, for about a fifth less CPU per exec:
                # docs/performance.md). Not while quiet: a lone short-lived process is still
                # seen, and killed, at once.
                now = time.monotonic()
                if busy and now - last_drain < batch:
                    time.sleep(batch - (now - last_drain))
                    now = time.monotonic()
                last_drain = now
                timers = now >= next_timers
                if timers:
                    next_timers = now + poll
                window_n += self._drain(timers)
                for task in self.housekeeping:
                    task()
                if now - window_start >= poll:
                    busy = window_n >= BUSY_RECORDS_PER_S * (now - window_start) * (0.5 if busy else 1)
                    window_start, window_n = now, 0
                self.store.tick()
                if self.csv is not None:
                    self.csv.tick()
                if now >= next_health:
                    self.host.sync_clock()
                    h = self.emit_health()
                    if on_health:
                        on_health(h)
                    next_health = now + interval
                if deadline and now >= deadline:
                    break
        finally:
            ep.close()
            self.shutdown()

    def shutdown(self):
        """Detach first, then read what the kernel already queued: nothing in flight is lost."""
        if self._closed:
            return
        self._closed = True
        for s in self.sources:
            s.detach()
        self._drain()
        if self.notifier is not None:
            self.notifier.close()
        self.store.flush()  # so the final health counts every event before it as written
        self.emit_health(final=True)
        if self.csv is not None:
            self.csv.close()
        if self.nats is not None:
            self.nats.close()  # after the final health event, which it carries too
        for s in self.sources:
            s.close()
        self.store.close()
        if self.uploader is not None:
            self.uploader.close()  # after the store's and CSVs' last files closed, so they go too
