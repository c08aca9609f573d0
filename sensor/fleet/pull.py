"""Reading a durable pull consumer in batches: raw pull requests answered into one inbox
subscription, the next request sent while the previous batch is being stored.

nats-py's `fetch` waits on each message with its own timer and task (about a third of a
collector's CPU); here the messages land in a list and one wake-up takes a whole batch. They
are taken from nats-py's protocol parser as bytes (sensor.fleet.rawnats), and a batch's acks go
as one command."""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from . import rawnats

log = logging.getLogger("sensor.fleet.pull")

EXPIRES = 2.0  # a pull request stays open this long for messages still to come
LINGER = 0.05  # a batch not full is handed over after this long: latency at low rates


class Puller:
    """`await next_batch()` returns up to `batch` messages, each (reply, data, subject) as bytes;
    at most two batches wait unstored."""

    def __init__(self, nc, stream: str, durable: str, batch: int):
        self.nc, self.batch = nc, batch
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.request = orjson.dumps({"batch": batch, "expires": int(EXPIRES * 1e9)})
        self.inbox = nc.new_inbox()
        self._msgs: list = []
        self._open = 0  # messages the open request may still bring
        self._asked_at = 0.0
        self._full = asyncio.Event()

    async def start(self):
        rawnats.intercept(self.nc, await self.nc.subscribe(self.inbox), self._take)
        await self._ask()

    async def next_batch(self) -> list:
        if self._open and time.monotonic() - self._asked_at > EXPIRES + 2:
            self._open = 0  # lost with a server that went away: ask again
        if not self._open:
            await self._ask()
        if len(self._msgs) < self.batch:
            try:
                await asyncio.wait_for(self._full.wait(), LINGER)
            except asyncio.TimeoutError:
                pass
        self._full.clear()
        out, self._msgs = self._msgs[:self.batch], self._msgs[self.batch:]
        if not self._open:
            await self._ask()
        return out

    async def reply(self, subjects: list[bytes], body: bytes):
        """Sends `body` (+ACK, +TERM) to each of `subjects` (the messages' reply subjects) in one
        command, not one publish each."""
        if subjects:
            tail = b" %d\r\n%b\r\n" % (len(body), body)
            await rawnats.send(self.nc, b"".join([b"PUB " + s + tail for s in subjects]))

    async def _ask(self):
        if len(self._msgs) >= 2 * self.batch or not self.nc.is_connected:
            return  # storing is behind: let the stream hold the rest
        self._open, self._asked_at = self.batch, time.monotonic()
        try:
            await self.nc.publish(self.api, self.request, reply=self.inbox)
        except Exception as exc:  # reconnecting: the next call asks again
            self._open = 0
            log.debug("pull request: %s", exc)

    async def _take(self, subject: bytes, reply: bytes, data: bytes, headers):
        status = rawnats.status(data, headers)
        if status:
            if status == b"100":  # a heartbeat
                return
            self._open = 0
            if status in (b"404", b"408"):  # expired, nothing came: ask again at once
                await self._ask()
            else:  # 409: e.g. a leader change; next_batch asks again, LINGER later
                log.debug("pull request ended: %s %s", status.decode(), rawnats.description(headers))
            return
        self._msgs.append((reply, data, subject))
        self._open -= 1
        if len(self._msgs) >= self.batch:
            self._full.set()
        if self._open <= 0:
            await self._ask()
