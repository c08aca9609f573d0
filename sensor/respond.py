"""Response policies: kill matching processes safely, block executables in the kernel."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .backend import kill as platform
from .filehash import sha256_file
from .schema import get, parse_time

log = logging.getLogger("sensor.respond")

ACTIONS = ("kill", "kill-tree", "block-exec", "none", "quarantine")
MATCH_KEYS = ("rule.id", "rule.name", "event.severity", "threat.technique.id", "rule.level")


@dataclass
class Policy:
    action: str
    match: dict = field(default_factory=dict)
    dry_run: bool = False
    executables: list[str] = field(default_factory=list)
    line: int = 0
    allow_system: bool = False  # quarantine may move files under /usr, /etc, ...
    sha256: set[str] = field(default_factory=set)  # block-exec by content

    def matches(self, alert: dict) -> bool:
        for key, want in self.match.items():
            if key == "threat.technique.id":
                got = [t.get("id") for t in get(alert, "threat.technique") or []]
                got += [s.get("id") for t in get(alert, "threat.technique") or [] for s in t.get("subtechnique", [])]
            else:
                got = [get(alert, key)]
            wants = want if isinstance(want, list) else [want]
            if not any(str(g) == str(w) for g in got for w in wants):
                return False
        return True


@dataclass
class Policies:
    rules: list[Policy]
    allow_executables: set[str] = field(default_factory=set)
    allow_users: set[str] = field(default_factory=set)

    @property
    def blocked_hashes(self) -> set[str]:
        return {h for p in self.rules if p.action == "block-exec" for h in p.sha256}

    def blocked_files(self) -> list[tuple[int, int, str]]:
        """(kernel dev, inode, path) of every block-exec executable, resolved now. The kernel
        kills an exec of one, and for a script (not an ELF binary) any process but the sensor that
        opens it for reading: how a script is stopped when its interpreter opens it
        (bpf/activity/file.c, sensor/linux/block.py block_how). None where no kernel blocks
        (Windows: the responder kills at the process start event instead)."""
        if not platform.BLOCK_IN_KERNEL:
            return []
        out = []
        for p in self.rules:
            if p.action != "block-exec":
                continue
            for exe in p.executables:
                st = os.stat(exe)
                out.append((_kdev(st), st.st_ino, os.path.realpath(exe)))
        hashes = self.blocked_hashes
        if hashes:  # files with a blocked digest already on disk, where programs usually live
            for d in SEARCH_DIRS:
                for f in _files(d):
                    if _digest(f) in hashes:
                        st = os.stat(f)
                        out.append((_kdev(st), st.st_ino, f))
        return out


SEARCH_DIRS = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/opt", "/tmp", "/var/tmp", "/dev/shm")
_digests: dict[tuple, str] = {}


def _kdev(st) -> int:
    """st_dev in the kernel's encoding (major << 20 | minor), as the block-list map keys it."""
    return (os.major(st.st_dev) << 20) | os.minor(st.st_dev)


def _files(d: str):
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.X_OK):
                yield p


def _digest(path: str, limit: int = 256 << 20) -> str | None:
    """sha256 of a file, cached by (dev, inode, size, mtime); None beyond `limit` bytes or on error."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        if st.st_size > limit:
            return None
        try:
            _digests[key] = sha256_file(path)
        except OSError:
            return None
    return _digests[key]


def load(path) -> Policies:
    """A policy file: a list of rules, or {allow: {...}, policies: [...]}; errors name the line."""
    path = Path(path)
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    allow = {}
    items, nodes = data, root.value if root is not None else []
    if isinstance(data, dict):
        allow = data.get("allow") or {}
        items = data.get("policies") or []
        nodes = next((v.value for k, v in root.value if k.value == "policies"), [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of policies")
    rules = []
    for item, node in zip(items, nodes):
        line = node.start_mark.line + 1
        if not isinstance(item, dict) or item.get("action") not in ACTIONS:
            raise ConfigError(f"{path}:{line}: each policy needs action: one of {', '.join(ACTIONS)}")
        p = Policy(action=item["action"], match=item.get("match") or {}, dry_run=bool(item.get("dry_run", False)),
                   executables=list(item.get("executables") or []), line=line,
                   allow_system=bool(item.get("allow_system", False)))
        if p.action == "block-exec":
            p.sha256 = {str(h).lower() for h in item.get("sha256") or []}
            bad = [h for h in p.sha256 if not re.fullmatch(r"[0-9a-f]{64}", h)]
            missing = [e for e in p.executables if not os.path.exists(e)]
            # a blocked file cannot be opened for reading either: a directory would kill every `ls` of it
            special = [e for e in p.executables if os.path.exists(e) and not os.path.isfile(e)]
            if not (p.executables or p.sha256) or missing or bad or special:
                raise ConfigError(f"{path}:{line}: block-exec needs existing executables and/or sha256 digests"
                                  + (f"; missing: {', '.join(missing)}" if missing else "")
                                  + (f"; not a regular file: {', '.join(special)}" if special else "")
                                  + (f"; not a sha256: {', '.join(bad)}" if bad else ""))
        else:
            bad = [k for k in p.match if k not in MATCH_KEYS]
            if not p.match or bad:
                raise ConfigError(f"{path}:{line}: match needs keys among {', '.join(MATCH_KEYS)}"
                                  + (f"; unknown: {', '.join(bad)}" if bad else ""))
        rules.append(p)
    return Policies(rules, {os.path.realpath(e) for e in allow.get("executables", [])}, set(allow.get("users", [])))


class Responder:
    """Turns alerts into actions; every decision, taken or refused, becomes a response event."""

    def __init__(self, policies: Policies, boot_offset_ns: int, quarantine=None):
        self.policies = policies
        self.boot_offset_ns = boot_offset_ns
        self.protected = platform.protected_pids()
        # where no kernel blocks an exec, a block-exec path is killed at its start event
        self.blocked_paths = {} if platform.BLOCK_IN_KERNEL else {
            os.path.normcase(os.path.realpath(e)): p for p in policies.rules if p.action == "block-exec"
            for e in p.executables}
        self.quarantine = quarantine

    def on_exec(self, event: dict, block) -> dict | None:
        """Content blocking: an exec of a file whose sha256 is blocked gets killed now, and its
        inode goes on the kernel's block list (`block(dev, ino)`) so it never runs again."""
        hashes = self.policies.blocked_hashes
        exe = get(event, "process.executable")
        if self.blocked_paths and exe and not get(event, "sensor.blocked"):
            p = self.blocked_paths.get(os.path.normcase(os.path.realpath(exe)))
            if p is not None:  # no kernel blocked it: killed now, after the fact
                outcome, reason, pids = self._kill(event, p)
                ev = self._event(event, p, outcome, f"{exe} is blocked (killed at its start); {reason}", pids)
                ev["file"] = {"path": exe}
                return ev
        if not hashes or not exe or get(event, "sensor.blocked"):
            return None
        digest = _digest(exe)
        if digest not in hashes:
            return None
        p = next(p for p in self.policies.rules if p.action == "block-exec" and digest in p.sha256)
        if platform.BLOCK_IN_KERNEL:
            try:
                st = os.stat(exe)
                block(_kdev(st), st.st_ino)
            except OSError:
                pass
        outcome, reason, pids = self._kill(event, p)
        ev = self._event(event, p, outcome, f"sha256 {digest} is blocked; {reason}", pids)
        ev["file"] = {"path": exe, "hash": {"sha256": digest}}
        return ev

    def respond(self, alert: dict) -> list[dict]:
        out = []
        for p in self.policies.rules:
            if p.action in ("kill", "kill-tree") and p.matches(alert):
                outcome, reason, pids = self._kill(alert, p)
                out.append(self._event(alert, p, outcome, reason, pids))
            elif p.action == "quarantine" and p.matches(alert):
                out.append(self._quarantine(alert, p))
            elif p.action == "none" and p.matches(alert):
                out.append(self._event(alert, p, "success", "policy says none", []))
        return out

    def _refusal(self, pid: int, alert: dict) -> str | None:
        exe, user = get(alert, "process.executable"), get(alert, "user.name")
        if pid in self.protected:
            return "protected process (pid 1, kernel, or the sensor and its parents)"
        if platform.is_kernel_thread(pid):
            return "kernel thread"
        if exe and os.path.realpath(exe) in self.policies.allow_executables:
            return f"allow-listed executable {exe}"
        if user and user in self.policies.allow_users:
            return f"allow-listed user {user}"
        return None

    def _kill(self, alert: dict, p: Policy) -> tuple[str, str, list[int]]:
        pid = get(alert, "process.pid")
        if not isinstance(pid, int):
            return "failure", "the alert names no process", []
        refusal = self._refusal(pid, alert)
        if refusal:
            return "skipped", refusal, [pid]
        targets = [pid] + (platform.descendants(pid) if p.action == "kill-tree" else [])
        if p.dry_run:
            return "success", "dry run: would kill " + ", ".join(map(str, targets)), targets
        start = get(alert, "process.start")
        want_ns = None if start is None else parse_time(start) - self.boot_offset_ns  # the records' clock
        killed, denied = [], []
        for t in targets:
            # pinned by a pidfd (Linux) or a handle (Windows), checked to be the alert's process
            result = platform.kill(t, want_ns if t == pid else None)
            if result == "reused":
                return "skipped", f"pid {t} now belongs to another process", targets
            if result == "killed":
                killed.append(t)
            elif result == "denied":
                denied.append(t)
        if not killed:
            why = f"access denied to {', '.join(map(str, denied))}" if denied else "the process had already exited"
            return "failure", why, targets
        return "success", f"killed {', '.join(map(str, killed))}", killed

    def _quarantine(self, alert: dict, p: Policy) -> dict:
        """Stops the process (same safety rules as kill), then moves its file aside."""
        from .errors import SensorError

        path = get(alert, "file.path") or get(alert, "process.executable")
        pid = get(alert, "process.pid")
        refusal = self._refusal(pid, alert) if isinstance(pid, int) else None
        if refusal or not path:
            return self._event(alert, p, "skipped", refusal or "the alert names no file", [pid])
        if p.dry_run:
            return self._event(alert, p, "success", f"dry run: would quarantine {path}", [pid])
        if get(alert, "file.path") is None and isinstance(pid, int):
            self._kill(alert, p)
        try:
            record = self.quarantine.put(path, {"rule": get(alert, "rule.id"), "alert": get(alert, "event.id")},
                                         allow_system=p.allow_system)
        except (SensorError, OSError) as exc:
            return self._event(alert, p, "skipped" if isinstance(exc, SensorError) else "failure", str(exc), [pid])
        ev = self._event(alert, p, "success", f"quarantined {path} as {record['id']}", [pid])
        ev["file"] = {"path": record["original_path"], "hash": {"sha256": record["sha256"]}, "size": record["size"]}
        ev["sensor"]["response"]["quarantine_id"] = record["id"]
        return ev

    def _event(self, alert: dict, p: Policy, outcome: str, reason: str, pids: list[int]) -> dict:
        return {"event": {"kind": "event", "category": ["process"], "type": ["info"], "action": f"response-{p.action}",
                          "dataset": "response", "module": "sensor", "outcome": "success" if outcome == "success"
                          else "failure" if outcome == "failure" else "unknown", "reason": reason},
                "rule": alert.get("rule", {}), "process": alert.get("process", {}),
                "sensor": {"response": {"action": p.action, "dry_run": p.dry_run, "result": outcome,
                                        "pids": pids, "policy_line": p.line,
                                        "alert": {"id": get(alert, "event.id")}}}}
