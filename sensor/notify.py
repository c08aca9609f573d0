"""Alert notifiers (webhook, Telegram, e-mail): queued off the pipeline, routed per rule,
deduplicated, rate-limited and retried with backoff."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import yaml

from .errors import ConfigError
from .schema import get

log = logging.getLogger("sensor.notify")
KINDS = ("webhook", "telegram", "email")


@dataclass
class Target:
    kind: str
    settings: dict
    match: dict = field(default_factory=dict)
    per_minute: int = 30
    sent: deque = field(default_factory=deque)  # send times in the last minute

    @property
    def name(self) -> str:
        return self.settings.get("name") or self.kind

    def wants(self, alert: dict) -> bool:
        for key, want in self.match.items():
            wants = want if isinstance(want, list) else [want]
            if str(get(alert, key)) not in map(str, wants):
                return False
        return True


def load(path) -> "Notifier":
    """notifiers: [{type: webhook|telegram|email, match: {...}, ...}], dedup_seconds, retries."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
    targets = []
    for i, item in enumerate(data.get("notifiers") or []):
        kind = item.get("type") if isinstance(item, dict) else None
        need = {"webhook": ("url",), "telegram": ("token", "chat_id"), "email": ("host", "to")}.get(kind)
        if need is None:
            raise ConfigError(f"{path}: notifier {i + 1}: type must be one of {', '.join(KINDS)}")
        missing = [k for k in need if not item.get(k)]
        if missing:
            raise ConfigError(f"{path}: notifier {i + 1} ({kind}): missing {', '.join(missing)}")
        settings = {k: v for k, v in item.items() if k not in ("type", "match", "per_minute")}
        targets.append(Target(kind, settings, item.get("match") or {}, int(item.get("per_minute", 30))))
    return Notifier(targets, dedup_seconds=float(data.get("dedup_seconds", 300)),
                    retries=int(data.get("retries", 4)), backoff=float(data.get("backoff", 1.0)))


def _text(alert: dict) -> str:
    p = alert.get("process", {})
    host = get(alert, "host.name") or "?"
    return (f"[{get(alert, 'rule.level') or '?'}] {get(alert, 'rule.name')} on {host}\n"
            f"process {p.get('pid')}: {p.get('command_line') or p.get('executable') or ''}\n"
            f"rule {get(alert, 'rule.id')} by {get(alert, 'rule.author')}")


class Notifier:
    """`submit` never blocks: alerts wait in a bounded queue for the delivery thread."""

    def __init__(self, targets: list[Target], *, dedup_seconds=300.0, retries=4, backoff=1.0, queue_size=1000):
        self.targets, self.dedup_seconds = targets, dedup_seconds
        self.retries, self.backoff = retries, backoff
        self.stats: Counter[str] = Counter()
        self._q: queue.Queue = queue.Queue(queue_size)
        self._seen: dict[tuple, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def submit(self, alert: dict):
        try:
            self._q.put_nowait(alert)
        except queue.Full:
            self.stats["dropped"] += 1

    def close(self, timeout: float = 10.0):
        """Delivers what is queued (up to timeout), then stops."""
        deadline = time.monotonic() + timeout
        while not self._q.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1)

    def _run(self):
        while not (self._stop.is_set() and self._q.empty()):
            try:
                alert = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._deliver(alert)
            finally:
                self._q.task_done()

    def _deliver(self, alert: dict):
        now = time.monotonic()
        key = (get(alert, "rule.id"), get(alert, "process.entity_id"))
        if now - self._seen.get(key, -1e18) < self.dedup_seconds:
            self.stats["deduplicated"] += 1
            return
        self._seen[key] = now
        for t in self.targets:
            if not t.wants(alert):
                continue
            while t.sent and now - t.sent[0] > 60:
                t.sent.popleft()
            if len(t.sent) >= t.per_minute:
                self.stats["rate_limited"] += 1
                continue
            t.sent.append(now)
            for attempt in range(self.retries + 1):
                try:
                    getattr(self, f"_send_{t.kind}")(t.settings, alert)
                    self.stats["sent"] += 1
                    break
                except (OSError, smtplib.SMTPException, urllib.error.URLError) as exc:
                    self.stats["retries"] += attempt < self.retries
                    if attempt == self.retries or self._stop.wait(self.backoff * 2 ** attempt):
                        self.stats["failed"] += 1
                        log.warning("notifier %s: giving up on an alert: %s", t.name, exc)
                        break

    @staticmethod
    def _post(url: str, body: bytes, headers: dict, timeout: float = 10):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()

    def _send_webhook(self, s: dict, alert: dict):
        body = json.dumps(alert, default=str).encode()
        headers = {}
        if s.get("secret"):  # receivers verify the body with the shared secret
            mac = hmac.new(str(s["secret"]).encode(), body, hashlib.sha256).hexdigest()
            headers["X-Sensor-Signature"] = f"sha256={mac}"
        self._post(s["url"], body, headers, s.get("timeout", 10))

    def _send_telegram(self, s: dict, alert: dict):
        base = s.get("api_base", "https://api.telegram.org").rstrip("/")
        body = json.dumps({"chat_id": s["chat_id"], "text": _text(alert)}).encode()
        self._post(f"{base}/bot{s['token']}/sendMessage", body, {}, s.get("timeout", 10))

    def _send_email(self, s: dict, alert: dict):
        msg = EmailMessage()
        msg["Subject"] = f"[sensor] {get(alert, 'rule.name')}"
        msg["From"] = s.get("from", "sensor@localhost")
        to = s["to"] if isinstance(s["to"], list) else [s["to"]]
        msg["To"] = ", ".join(to)
        msg.set_content(_text(alert) + "\n\n" + json.dumps(alert, indent=2, default=str))
        with smtplib.SMTP(s["host"], int(s.get("port", 25)), timeout=s.get("timeout", 10)) as smtp:
            if s.get("starttls"):
                smtp.starttls()
            if s.get("username"):
                smtp.login(s["username"], s.get("password", ""))
            smtp.send_message(msg)
