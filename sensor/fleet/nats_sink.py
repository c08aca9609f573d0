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
        self.sent = self.duplicates = self.dropped_queue = 0
        self.connected = False
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
               "duplicates": self.duplicates, "connected": self.connected}
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
        while True:
            self._drain()
            stopping = self._stop.is_set()
            if stopping and (not self.outbox.pending or nc is None or time.monotonic() >= self._close_by):
                break
            if nc is None:
                nc = await self._connect()
                if nc is None:
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                js = nc.jetstream(publish_async_max_pending=WINDOW * 2)
            batch = self.outbox.read(WINDOW)
            if not batch:
                await self._sleep(DRAIN_INTERVAL)
            elif not await self._send(js, batch):
                self.outbox.rewind()
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff, self.last_error = 0.2, None
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
            self._error(f"nats: {describe(exc)}")

        async def on_disconnect():
            self.connected = False

        async def on_reconnect():
            self.connected = True

        try:
            nc = await connect(self.opts, "sensor", callbacks={"error": on_error, "disconnected_cb": on_disconnect,
                                                              "reconnected_cb": on_reconnect})
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

    async def _send(self, js, batch) -> bool:
        """Publishes a window; acknowledges the outbox up to the first record not acknowledged."""
        futures = []
        try:
            for _, rec in batch:
                subj, msgid, doc = rec.split(b" ", 2)
                futures.append(await js.publish_async(subj.decode(), doc[:-1], wait_stall=ACK_TIMEOUT,
                                                       headers={"Nats-Msg-Id": msgid.decode()}))
        except Exception as exc:
            self._error(f"publish failed: {describe(exc)}")
        if futures:
            await asyncio.wait(futures, timeout=ACK_TIMEOUT)
        n = 0
        for fut in futures:
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                break
            n += 1
            if fut.result().duplicate:
                self.duplicates += 1
        for fut in futures[n:]:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled() and fut.exception() is not None:
                self._error(f"publish refused: {describe(fut.exception())}")
        if n:
            self.outbox.ack(batch[n - 1][0], n)
            self.sent += n
        if n < len(batch) and not self.last_error:
            self._error(f"no acknowledgement within {ACK_TIMEOUT:g}s; resending from the outbox")
        return n == len(batch)

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
