"""SIGHUP: reload the Sigma rules and response policies of a running sensor (systemd's ExecReload).

The config file is read again (flags still win), so a changed `rules:` or `response_policy:` path
is followed too. The new set is loaded completely before it replaces the old one, by swapping one
reference, so a bad edit leaves the running rules in place and says why. Everything else (sources,
store, ring buffers) keeps running: changing those takes a restart.

The handler only raises a flag (a handler runs between any two bytecodes of the main thread: one
that loaded rules and logged there could meet the logging or import locks half taken, as stopping
once deadlocked in Event.set); the pipeline's loop reloads at its next turn, within poll_interval,
between two batches of events, so they see either the old or the new set. SIGHUPs that arrive
meanwhile make one reload, of what is on disk by then."""
from __future__ import annotations

import logging
import signal

from .errors import SensorError

log = logging.getLogger("sensor.reload")


class Reloader:
    def __init__(self, pipeline, resolve):
        """`resolve()` -> the Config as at start: defaults, the file read again, the same flags."""
        self.pipeline = pipeline
        self.resolve = resolve
        self.reloads = self.failures = 0
        self._pending = False

    def install(self, signum: int = signal.SIGHUP):
        signal.signal(signum, self._handler)
        self.pipeline.housekeeping.append(self.poll)
        return self

    def _handler(self, signum, frame):
        self._pending = True

    def poll(self):
        """Called by the pipeline's loop: reloads if a SIGHUP came since the last call."""
        if self._pending:
            self._pending = False
            self.reload()

    def reload(self) -> bool:
        p = self.pipeline
        try:
            cfg = self.resolve()
            from .pipeline import load_rules

            rules = load_rules(cfg["rules"], cfg["rules_skip_invalid"])
            policies = blocked = None
            if cfg["response_policy"]:
                from .respond import load

                policies = load(cfg["response_policy"])
                blocked = policies.blocked_files() if any(x.action == "block-exec" for x in policies.rules) else []
        except (SensorError, OSError) as exc:
            self.failures += 1
            log.error("reload failed, the running rules and policies stay: %s", exc)
            return False
        p.rules = rules
        if policies is None:
            p.policies = p.responder = None
        elif p.responder is None:
            from .quarantine import Quarantine
            from .respond import Responder

            p.policies = policies
            p.responder = Responder(policies, p.host.boot_offset_ns, Quarantine(cfg["data_dir"]))
        else:
            p.policies = p.responder.policies = policies
        for dev, ino, path in blocked or ():
            p._block(dev, ino, path)  # newly listed files join the kernel's list; a dropped one stays until restart
        self.reloads += 1
        log.info("reloaded: %d Sigma rules, %d response policies", len(rules.rules) if rules else 0,
                    len(policies.rules) if policies else 0)
        return True
