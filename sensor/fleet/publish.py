"""Publishing windows of outbox records to JetStream: core publishes that carry a reply subject,
and one wildcard subscription that settles their acknowledgements.

nats-py's `publish_async` costs about 4x the CPU per event (a future and a task each); here a
window is one command of HPUB lines built from the outbox's bytes, and an ack one small JSON
message matched by the token in its subject, taken from the protocol parser
(sensor.fleet.rawnats)."""
from __future__ import annotations

import asyncio
import re
from collections import defaultdict, deque
from dataclasses import dataclass

import orjson

from . import rawnats

# nats-py hands the server's -ERR for a refused publish to the error callback, naming the subject
REFUSED = re.compile(r'permissions violation for publish to "?([^"\s]+)"?', re.IGNORECASE)
_OK, _DUPLICATE, _FAILED, _REFUSED = 1, 2, 3, 4


@dataclass
class Outcome:
    settled: int = 0  # leading records the outbox may drop: stored (or duplicates) and refused
    sent: int = 0
    duplicates: int = 0
    refused: int = 0
    error: str | None = None  # why the window stopped short, if it did


class Publisher:
    """One per connection: `send` publishes a window and waits for it to settle."""

    def __init__(self, ack_timeout: float):
        self.ack_timeout = ack_timeout
        self.inbox = b""
        self._seq = 0
        self._state: dict[int, int] = {}  # token -> 0 (waiting) or how it settled
        self._by_subject: dict[bytes, deque] = defaultdict(deque)  # tokens in publish order
        self._waiting = 0
        self._settled = asyncio.Event()
        self._error: str | None = None

    async def subscribe(self, nc):
        inbox = nc.new_inbox()
        self.inbox = inbox.encode()
        rawnats.intercept(nc, await nc.subscribe(inbox + ".*"), self._on_ack)

    async def send(self, nc, batch) -> Outcome:
        tokens, lines = [], []
        self._settled.clear()
        self._error = None
        limit = nc.max_payload
        for _, rec in batch:
            subject, msgid, doc = rec.split(b" ", 2)  # doc ends in the record's newline
            self._seq += 1
            token = self._seq
            tokens.append(token)
            hdr = b"NATS/1.0\r\nNats-Msg-Id: %b\r\n\r\n" % msgid
            size = len(hdr) + len(doc) - 1
            if size > limit:  # the server would close the connection over it, every time: dropped, counted
                self._state[token] = _REFUSED
                self._error = f"publish refused: an event of {size:,} bytes exceeds the server's max_payload ({limit:,})"
                continue
            self._state[token] = 0  # before sending: an ack may come while the window is flushed
            self._by_subject[subject.lower()].append(token)  # nats-py lowercases the -ERR
            lines.append(b"HPUB %b %b.%d %d %d\r\n%b%b\r\n" % (subject, self.inbox, token, len(hdr), size, hdr, doc[:-1]))
        self._waiting = len(lines)
        try:
            if lines:
                await rawnats.send(nc, b"".join(lines))
        except Exception as exc:  # connection lost or buffer full: nothing of the window went out
            self._error = f"publish failed: {str(exc) or type(exc).__name__}"
            for token in tokens:
                del self._state[token]
            tokens, self._waiting = [], 0
        if self._waiting:
            try:
                await asyncio.wait_for(self._settled.wait(), self.ack_timeout)
            except asyncio.TimeoutError:
                self._error = self._error or f"no acknowledgement within {self.ack_timeout:g}s; resending from the outbox"
        out = Outcome(error=self._error)
        counting = bool(tokens)
        for token in tokens:
            state = self._state.pop(token)
            if state in (0, _FAILED):
                counting = False
            if counting:
                out.settled += 1
                if state == _REFUSED:
                    out.refused += 1
                else:
                    out.sent += 1
                    out.duplicates += state == _DUPLICATE
        self._waiting = 0
        self._by_subject.clear()
        return out

    def refused(self, subject: str):
        """The server refused one publish on `subject`: the oldest one still waiting there."""
        tokens = self._by_subject.get(subject.lower().encode())
        while tokens:
            token = tokens.popleft()
            if self._state.get(token) == 0:
                self._settle(token, _REFUSED)
                if self._error is None:
                    self._error = f"publish refused: no permission to publish to {subject}; such events are dropped and counted"
                return

    async def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers):
        try:
            token = int(subject[subject.rindex(b".") + 1:])
        except ValueError:
            return
        if self._state.get(token) != 0:
            return  # an ack for a window given up on: its events are sent again (the stream drops repeats)
        code = rawnats.status(data, headers)
        if code or b'"error"' in data:  # 503: no stream on the subject; a JSON error: e.g. stream full
            why = f"status {code.decode()} {rawnats.description(headers)}".strip() if code else _description(data)
            self._error = f"publish refused by JetStream: {why}"
            self._settle(token, _FAILED)
            return
        self._settle(token, _DUPLICATE if b'"duplicate":true' in data else _OK)

    def _settle(self, token: int, state: int):
        self._state[token] = state
        self._waiting -= 1
        if self._waiting <= 0:
            self._settled.set()


def _description(data: bytes) -> str:
    try:
        err = orjson.loads(data)["error"]
        return f"{err.get('description')} (code {err.get('code')})"
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")
