"""Publishing windows of outbox records to JetStream: core publishes that carry a reply subject,
and one wildcard subscription that settles their acknowledgements.

nats-py's `publish_async` costs about 4x the CPU per event (a future and a task each); here a
publish is one PUB and an ack one small JSON message matched by the token in its subject."""
from __future__ import annotations

import asyncio
import re
from collections import defaultdict, deque
from dataclasses import dataclass

import orjson

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
        self.inbox = ""
        self._seq = 0
        self._state: dict[str, int] = {}  # token -> 0 (waiting) or how it settled
        self._by_subject: dict[str, deque] = defaultdict(deque)  # tokens in publish order
        self._waiting = 0
        self._settled = asyncio.Event()
        self._error: str | None = None

    async def subscribe(self, nc):
        self.inbox = nc.new_inbox()
        await nc.subscribe(self.inbox + ".*", cb=self._on_ack)

    async def send(self, nc, batch) -> Outcome:
        tokens = []
        self._settled.clear()
        self._error = None
        try:
            for _, rec in batch:
                subject, msgid, doc = rec.split(b" ", 2)
                subject = subject.decode()
                self._seq += 1
                token = str(self._seq)
                self._state[token] = 0
                self._by_subject[subject.lower()].append(token)  # nats-py lowercases the -ERR
                self._waiting += 1
                tokens.append(token)
                await nc.publish(subject, doc[:-1], reply=f"{self.inbox}.{token}",
                                 headers={"Nats-Msg-Id": msgid.decode()})
        except Exception as exc:  # connection lost or buffer full: settle what went out
            self._error = f"publish failed: {str(exc) or type(exc).__name__}"
        if self._waiting:
            try:
                await asyncio.wait_for(self._settled.wait(), self.ack_timeout)
            except asyncio.TimeoutError:
                self._error = self._error or f"no acknowledgement within {self.ack_timeout:g}s; resending from the outbox"
        out = Outcome(error=self._error)
        counting = True
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
        tokens = self._by_subject.get(subject.lower())
        while tokens:
            token = tokens.popleft()
            if self._state.get(token) == 0:
                self._settle(token, _REFUSED)
                if self._error is None:
                    self._error = f"publish refused: no permission to publish to {subject}; such events are dropped and counted"
                return

    async def _on_ack(self, msg):
        token = msg.subject.rpartition(".")[2]
        if self._state.get(token) != 0:
            return  # an ack for a window given up on: its events are sent again (the stream drops repeats)
        data = msg.data
        status = msg.headers.get("Status") if msg.headers else None
        if status or b'"error"' in data:  # 503: no stream on the subject; a JSON error: e.g. stream full
            why = f"status {status} {msg.headers.get('Description', '')}".strip() if status else _description(data)
            self._error = f"publish refused by JetStream: {why}"
            self._settle(token, _FAILED)
            return
        self._settle(token, _DUPLICATE if b'"duplicate":true' in data else _OK)

    def _settle(self, token: str, state: int):
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
