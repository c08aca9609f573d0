"""`sensor collect`: a durable pull consumer on the SENSOR stream, batches COPYed into PostgreSQL,
acknowledged only after their transaction commits."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import deque

from ..errors import ConfigError
from .broker import STREAM, SUBJECTS, BrokerError, BrokerOptions, connect, describe, ensure_stream
from .pull import Puller
from .pgwrite import PostgresError, Writer, decode, health_summary, pg_connect  # noqa: F401 (their home once)

log = logging.getLogger("sensor.fleet.collect")

DURABLE = "collect"


class Collector:
    """Fetches batches from the durable consumer and hands them to its Writers (one PostgreSQL
    connection each, so batches commit side by side); acks each batch after its commit."""

    def __init__(self, opts: BrokerOptions, dsn: str, *, batch: int = 1000, ack_wait: float = 30.0,
                 durable: str = DURABLE, writers: int = 2):
        if writers < 1:
            raise ConfigError(f"--writers {writers}: at least one")
        self.opts, self.batch, self.ack_wait, self.durable = opts, batch, ack_wait, durable
        self.writers = [Writer(dsn) for _ in range(writers)]
        self.bad = self.batches = 0
        self.stop = asyncio.Event()

    async def run(self, duration: float | None = None, ready=None):
        for w in self.writers:  # a bad DSN fails here, before any fetch
            await asyncio.to_thread(w.connect)
        nc = await connect(self.opts, "sensor-collect", callbacks={"error": lambda exc: None},
                           skip_subject_validation=True)
        try:
            await self._stream(nc.jetstream())
            puller = Puller(nc, STREAM, self.durable, self.batch)
            await puller.start()
            if ready is not None:
                ready()
            deadline = time.monotonic() + duration if duration else None
            free, writing = list(self.writers), deque()  # batches committing while the next is decoded
            try:
                while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    msgs = await puller.next_batch()
                    rows, docs, good, bad = self._decode(msgs)
                    while writing and (not free or writing[0][0].done()):
                        free.append(await self._finish(puller, *writing.popleft()))
                    if msgs:
                        w = free.pop()
                        writing.append((asyncio.ensure_future(self._write(w, rows, docs)), w, good, bad))
            finally:
                while writing:
                    await self._finish(puller, *writing.popleft())
        finally:
            try:
                await nc.close()
            except Exception:
                pass
            for w in self.writers:
                w.close()

    async def _stream(self, js, patience: float = 30.0):
        """The stream and consumer, created if missing; a cluster just started may still be
        electing its JetStream leader (requests time out meanwhile): wait for it, up to `patience`."""
        deadline = time.monotonic() + patience
        while True:
            try:
                await ensure_stream(js, self.opts)
                return await self._consumer(js)
            except Exception as exc:
                if time.monotonic() >= deadline or type(exc).__name__ not in (
                        "TimeoutError", "ServiceUnavailableError", "NoRespondersError"):
                    raise BrokerError(f"stream {STREAM}: {describe(exc)}") from None
                log.info("nats: JetStream not ready (%s), waiting", describe(exc))
                await asyncio.sleep(0.5)

    async def _consumer(self, js):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            await js.consumer_info(STREAM, self.durable)  # shared: the first collector made it
        except NotFoundError:
            await js.add_consumer(STREAM, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                deliver_policy=DeliverPolicy.ALL, max_ack_pending=20 * self.batch, filter_subject=SUBJECTS))

    def _decode(self, msgs):
        """Rows of the events among msgs; a document is kept only where the hosts table needs it
        (a host's first event in the batch, health), so the rest are freed at once."""
        rows, docs, good, bad, seen = [], [], [], [], set()
        for m in msgs:  # (reply, data, subject)
            decoded = decode(m[1])
            if decoded is None:
                bad.append(m)
                continue
            row, doc = decoded
            rows.append(row)
            docs.append(doc if row[2] not in seen or row[3] == "sensor.health" else None)
            seen.add(row[2])
            good.append(m)
        return rows, docs, good, bad

    async def _write(self, writer, rows, docs) -> bool:
        """True once committed; retried while PostgreSQL is away; False if stopped meanwhile."""
        backoff = 0.2
        while rows:
            try:
                await asyncio.to_thread(writer.write, rows, docs)
                break
            except Exception as exc:  # PostgreSQL restarting, a lost connection: keep the batch, retry
                log.warning("postgres: %s; retrying the batch of %d in %.1fs", describe(exc), len(rows), backoff)
                await asyncio.to_thread(writer.close)
                if self.stop.is_set():
                    return False  # not acked: redelivered to the next collector
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.batches += 1
        return True

    async def _finish(self, puller, write, writer, good, bad):
        """Waits for a batch's commit, then acks it; returns its writer, free again."""
        from nats.aio.msg import Msg  # a bad message's stream sequence, from its reply subject

        if not await write:
            return writer
        await puller.reply([m[0] for m in good], b"+ACK")  # committed: now, and only now, acknowledged
        for reply, _, subject in bad:  # never a valid event, never will be: counted, and not redelivered forever
            self.bad += 1
            log.warning("collect: message %s on %s is not an event, dropped",
                        Msg.Metadata._from_reply(reply.decode()).sequence.stream, subject.decode(errors="replace"))
        await puller.reply([m[0] for m in bad], b"+TERM")
        return writer

    def summary(self) -> str:
        stored, dups = sum(w.stored for w in self.writers), sum(w.duplicates for w in self.writers)
        return f"{stored:,} events stored, {dups:,} duplicates ignored, {self.bad:,} bad messages dropped"


def add_arguments(p):
    p.add_argument("--nats-url", required=True, metavar="URL[,URL...]", help="the JetStream cluster")
    p.add_argument("--postgres", required=True, metavar="DSN", help="e.g. postgresql://collector@db:5432/sensor")
    p.add_argument("--nats-user")
    p.add_argument("--nats-password")
    p.add_argument("--nats-creds", metavar="FILE", help="a NATS .creds file")
    p.add_argument("--nats-nkey", metavar="FILE", help="an nkey seed file")
    p.add_argument("--nats-tls-ca", metavar="FILE")
    p.add_argument("--nats-tls-cert", metavar="FILE")
    p.add_argument("--nats-tls-key", metavar="FILE")
    p.add_argument("--nats-replicas", type=int, default=1, help="replicas of the SENSOR stream if created here (1)")
    p.add_argument("--batch", type=int, default=1000, help="events per fetch and transaction (1000)")
    p.add_argument("--writers", type=int, default=2,
                   help="PostgreSQL connections committing batches side by side (2)")
    p.add_argument("--ack-wait", type=float, default=30.0,
                   help="seconds before an unacknowledged batch is redelivered to another collector (30)")
    p.add_argument("--durable", default=DURABLE, help=f"the shared consumer's name ({DURABLE})")
    p.add_argument("--duration", type=float, help="stop after this many seconds")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = BrokerOptions.parse(args.nats_url, user=args.nats_user, password=args.nats_password,
                               creds=args.nats_creds, nkey=args.nats_nkey, tls_ca=args.nats_tls_ca,
                               tls_cert=args.nats_tls_cert, tls_key=args.nats_tls_key, replicas=args.nats_replicas)
    collector = Collector(opts, args.postgres, batch=args.batch, ack_wait=args.ack_wait, durable=args.durable,
                          writers=args.writers)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, collector.stop.set)
        await collector.run(args.duration, ready=lambda: print(
            f"sensor collect: {','.join(opts.urls)} -> PostgreSQL; SIGTERM stops", file=sys.stderr, flush=True))

    asyncio.run(main())
    print(f"sensor collect: stopped; {collector.summary()}", file=sys.stderr)
    return 0
