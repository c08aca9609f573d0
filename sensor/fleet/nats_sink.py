"""`--sink nats`: every event into the outbox, and a thread that publishes it to JetStream."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

import orjson

from .broker import BrokerOptions, connect, describe, ensure_stream, subject
from .outbox import Outbox
from .publish import REFUSED, Publisher

log = logging.getLogger("sensor.fleet.nats")

WINDOW = 1000  # publishes in flight at once
ACK_TIMEOUT = 5.0  # a window not acknowledged by then is sent again (the stream drops repeats)
DRAIN_INTERVAL = 0.02  # how often the publisher thread moves queued events into the outbox
SAVE_INTERVAL = 0.5  # how often the acknowledged position is persisted


class NatsSink:
    """`write` (the pipeline thread) only serializes and queues; a thread with its own asyncio loop
    appends the queue to the outbox and publishes from there, so the pipeline never waits on the
    network. An event counts as sent once JetStream acknowledged it."""

    def __init__(self, opts: BrokerOptions, outbox_dir, *, max_bytes: int = 256 << 20,
                 segment_bytes: int = 8 << 20, queue_max: int = 1 << 16):
        self.opts = opts
        opts.connect_kwargs()  # bad TLS files fail now, in one line, not in the thread
        self.outbox = Outbox(outbox_dir, max_bytes=max_bytes, segment_bytes=segment_bytes)
        self.queue_max = queue_max
        self.sent = self.duplicates = self.dropped_queue = self.refused = 0
        self.connected = False
        self._publisher: Publisher | None = None
        self.last_error: str | None = None
        self._queue: deque[bytes] = deque()
        self._subjects: dict[tuple, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="nats-publisher", daemon=True)
        self._thread.start()

    def write(self, event: dict) -> None:
        ev = event["event"]
        host = event.get("host")
        key = (host.get("id") if host else None, ev.get("dataset"))
        prefix = self._subjects.get(key)
        if prefix is None:
            prefix = self._subjects[key] = subject(*key).encode() + b" "
        if len(self._queue) >= self.queue_max:  # the publisher thread is starved: count, never block
            self.dropped_queue += 1
            return
        try:
            doc = orjson.dumps(event)
        except TypeError:
            self.dropped_queue += 1
            return
        self._queue.append(b"%s%s %s\n" % (prefix, ev["id"].encode(), doc))

    def stats(self) -> dict:
        out = {"sent": self.sent, "queued": self.outbox.pending + len(self._queue),
               "queued_bytes": self.outbox.size, "overflow": self.outbox.overflow + self.dropped_queue,
               "refused": self.refused, "duplicates": self.duplicates, "connected": self.connected}
        if self.last_error:
            out["error"] = self.last_error
        return out

    def close(self, timeout: float = 5.0):
        """Stops after sending what it can within `timeout`; the rest waits in the outbox."""
        self._close_by = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 5)
        left = self.outbox.pending
        if left:
            log.warning("nats: %d events wait in %s for the next start", left, self.outbox.dir)

    # -- the publisher thread --------------------------------------------------------------------

    def _main(self):
        try:
            asyncio.run(self._run())
        except Exception as exc:  # never silent: the health event carries it, the outbox keeps the events
            self.last_error = f"publisher stopped: {describe(exc)}"
            log.exception("nats: publisher stopped")
        finally:
            self._drain()
            self.outbox.close()

    def _drain(self):
        q = self._queue
        if q:
            batch = [q.popleft() for _ in range(len(q))]
            self.outbox.append(batch)

    async def _run(self):
        nc, backoff, saved = None, 0.2, time.monotonic()
        refused_at_close = False  # unconnected at close: one more attempt, not a wait for the broker
        while True:
            self._drain()
            stopping = self._stop.is_set()
            if stopping and (not self.outbox.pending or refused_at_close or time.monotonic() >= self._close_by):
                break
            if nc is None:
                nc = await self._connect()
                if nc is None:
                    refused_at_close = stopping
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                self._publisher = Publisher(ACK_TIMEOUT)
                await self._publisher.subscribe(nc)
            batch = self.outbox.read(WINDOW) if nc.is_connected else None  # reconnecting: wait
            if not batch:
                await self._sleep(DRAIN_INTERVAL)
            elif not await self._send(nc, batch):
                self.outbox.rewind()
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2
            if time.monotonic() - saved >= SAVE_INTERVAL:
                self.outbox.save()
                saved = time.monotonic()
        if nc is not None:
            try:
                await nc.close()
            except Exception:
                pass

    async def _sleep(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._stop.is_set():
            await asyncio.sleep(min(DRAIN_INTERVAL, end - time.monotonic()))
            self._drain()

    async def _connect(self):
        def on_error(exc):
            m = REFUSED.search(str(exc))
            if m and self._publisher is not None:  # a refused publish gets no ack: settle it now
                self._publisher.refused(m.group(1))
            else:
                self._error(describe(exc))

        async def on_disconnect():
            self.connected = False

        async def on_reconnect():
            self.connected = True

        try:
            nc = await connect(self.opts, "sensor", callbacks={"error": on_error, "disconnected_cb": on_disconnect,
                                                              "reconnected_cb": on_reconnect},
                               skip_subject_validation=True)  # subject() made them valid
        except Exception as exc:
            self._error(f"{describe(exc)}; events wait in the outbox")
            return None
        try:
            await ensure_stream(nc.jetstream(timeout=2), self.opts)
        except Exception as exc:  # a host allowed only to publish may not read stream info
            log.info("nats: stream %s not checked (%s); publishing anyway", "SENSOR", describe(exc))
        self.connected, self.last_error = True, None
        log.info("nats: connected to %s", nc.connected_url.netloc if nc.connected_url else self.opts.urls)
        return nc

    async def _send(self, nc, batch) -> bool:
        """Publishes a window; the outbox lets go of it up to the first record not settled.
        A refused record (no permission for its subject) is settled too: dropped and counted,
        as it would be refused again, and must not hold back the host's other events."""
        out = await self._publisher.send(nc, batch)
        if out.settled:
            self.outbox.ack(batch[out.settled - 1][0], out.settled)
            self.sent += out.sent
            self.duplicates += out.duplicates
            self.refused += out.refused
        if out.error:
            self._error(out.error)
        elif out.settled == len(batch):
            self.last_error = None
        return out.settled == len(batch)

    def _error(self, msg: str):
        if msg != self.last_error:
            log.warning("nats: %s", msg)
        self.last_error = msg


def sink_from_config(cfg) -> NatsSink:
    """The sink `--sink nats` asks for, with the nats.* and outbox.* options."""
    from pathlib import Path

    n = cfg.section("nats")
    opts = BrokerOptions.parse(n.pop("url"), **n)
    return NatsSink(opts, Path(cfg["data_dir"]) / "outbox", **cfg.section("outbox"))
