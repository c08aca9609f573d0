"""The public event schema: ECS-aligned field builders, reversible escaping, event stamping.

Documented in docs/schema.md; bump SCHEMA_VERSION on any change a reader could notice.
"""
from __future__ import annotations

import itertools
import re
import time
from datetime import datetime, timezone

from . import __version__
from .backend import system
from .host import Host

SCHEMA_VERSION = "1.1.0"
ECS_VERSION = "8.11.0"

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def text(raw: bytes | str) -> tuple[str, bool]:
    """Kernel bytes as a JSON-safe string, and whether it had to be escaped.

    Valid UTF-8 passes unchanged. Otherwise each invalid byte becomes `\\xNN` and each literal
    backslash `\\\\`, so `unescape` restores the exact bytes; the event lists such fields in
    `sensor.escaped`.
    """
    if isinstance(raw, bytes):
        try:  # the common case, and strict UTF-8 never yields a lone surrogate
            return raw.decode(), False
        except UnicodeDecodeError:
            s = raw.decode("utf-8", "surrogateescape")
    else:
        s = raw
    if not _SURROGATE.search(s):
        return s, False
    s = s.replace("\\", "\\\\")
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", s), True


def unescape(s: str) -> bytes:
    """Inverse of `text` for a field listed in `sensor.escaped`."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(s):
        out += s[pos:m.start()].encode()
        g = m.group(1)
        out += b"\\" if g == "\\" else bytes([int(g[1:], 16)])
        pos = m.end()
    return bytes(out + s[pos:].encode())


def rfc3339(unix_ns: int) -> str:
    """`@timestamp`: UTC with nanoseconds, e.g. 2026-11-24T23:38:01.123456789Z."""
    secs = unix_ns // 1_000_000_000  # operators: cheaper than divmod's call and tuple
    head = _SECONDS.get(secs)
    if head is None:  # events come in bursts within a second; processes' starts repeat
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[secs] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs))
    return "%s%09dZ" % (head, unix_ns - secs * 1_000_000_000)  # %-formatting: twice as fast as an f-string with a call


_SECONDS: dict[int, str] = {}


def parse_time(value: str) -> int:
    """RFC 3339 (any fraction) to ns since the epoch."""
    s = value.strip().replace("Z", "+00:00")
    frac = ""
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", s)
    if m:
        s, frac = m.group(1) + m.group(3), m.group(2)
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


def exit_fields(status: int) -> dict:
    """A raw wait status as process.exit_code (shell convention: 128+N when killed by signal N)."""
    sig = status & 0x7F
    if sig:
        return {"exit_code": 128 + sig, "exit_signal": sig, "core_dumped": bool(status & 0x80)}
    return {"exit_code": (status >> 8) & 0xFF}


class Stamper:
    """Gives every event its envelope: @timestamp, event.id and a per-boot monotonic sequence.

    The sequence starts at the boot clock's nanosecond the sensor started (CLOCK_BOOTTIME; on
    Windows the interrupt time), so a restarted sensor (even after SIGKILL) continues above every
    number an earlier run of this boot used, with no state file: no sensor emits more than one
    event per nanosecond.
    """

    def __init__(self, host: Host, label: str | None = None):
        self.host = host
        self._labels = {"run": label} if label else None  # `sensor run --label`: on every event
        self._seq = itertools.count(system.boot_ns())
        # shared by every event: sinks read events, never change them
        self._agent = {"type": "sensor", "version": __version__}
        self._ecs = {"version": ECS_VERSION}
        self._boot = host.boot_id.replace("-", "")[:16]

    def stamp(self, event: dict, boot_ns: int | None = None) -> dict:
        seq = next(self._seq)
        ev = event.setdefault("event", {})
        ev["sequence"] = seq
        ev["id"] = "%s-%x" % (self._boot, seq)
        if "kind" not in ev:
            ev["kind"] = "event"
        event["@timestamp"] = rfc3339(time.time_ns() if boot_ns is None else self.host.unix_ns(boot_ns))
        # the host's identity, beside what a source put under host (host.metrics)
        event["host"] = {**event["host"], **self.host.ecs} if "host" in event else self.host.ecs
        event["agent"] = self._agent
        event["ecs"] = self._ecs
        if self._labels is not None:
            event["labels"] = {**event["labels"], **self._labels} if "labels" in event else self._labels
        if "sensor" in event:
            event["sensor"]["schema"] = SCHEMA_VERSION
        else:
            event["sensor"] = {"schema": SCHEMA_VERSION}
        return event


def get(event: dict, dotted: str):
    """Field by ECS dotted name, e.g. get(ev, "process.parent.pid"); None when absent."""
    cur = event
    if dotted in cur:
        return cur[dotted]
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur
