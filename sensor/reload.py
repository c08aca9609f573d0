"""SIGHUP: reload the Sigma rules and response policies of a running sensor (systemd's ExecReload).

The config file is read again (flags still win), so a changed `rules:` or `response_policy:` path
is followed too. The new set is loaded completely before it replaces the old one, by swapping one
reference, so a bad edit leaves the running rules in place and says why. Everything else (sources,
store, ring buffers) keeps running: changing those takes a restart.

The reload runs inside the signal handler. Python runs handlers in the main thread between two
bytecodes, so the pipeline sees either the old or the new set, never half of one; a SIGHUP that
arrives during a reload makes it run once more when it ends, with what is on disk by then."""
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
        self._busy = self._again = False

    def install(self, signum: int = signal.SIGHUP):
        signal.signal(signum, self._handler)
        return self

    def _handler(self, signum, frame):
        if self._busy:  # nested in a reload under way: run once more after it
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self.reload()
        finally:
            self._busy = False

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
