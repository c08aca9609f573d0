"""`sensor collect`: a durable pull consumer on the SENSOR stream, batches COPYed into PostgreSQL,
acknowledged only after their transaction commits."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from datetime import datetime, timedelta, timezone

import orjson

from ..errors import SensorError
from ..schema import parse_time
from .broker import STREAM, SUBJECTS, BrokerError, BrokerOptions, connect, describe, ensure_stream
from .pgschema import ensure_partitions, existing_partitions, migrate

log = logging.getLogger("sensor.fleet.collect")

DURABLE = "collect"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_COLUMNS = ("id", "ts", "host_id", "dataset", "kind", "rule_id", "process_entity", "severity", "doc")


class PostgresError(SensorError):
    """PostgreSQL cannot be reached or refuses us."""

    hint = "check --postgres (e.g. postgresql://USER@HOST:5432/DB) and that the server runs"


def pg_connect(dsn: str):
    """A psycopg connection, or a PostgresError naming the server (never the password)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise PostgresError(f"--postgres: not a connection string: {str(exc).splitlines()[0]}") from None
    where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    try:
        return psycopg.connect(dsn, connect_timeout=5)
    except psycopg.Error as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise PostgresError(f"cannot connect to PostgreSQL at {where}: {lines[-1] if lines else exc}") from None


def decode(data: bytes):
    """A message as an `events` row, or None when it is no event (counted as bad)."""
    try:
        # jsonb refuses \u0000; orjson writes a NUL that way, so it is stored as the schema's \x00
        if b"\\u0000" in data:
            data = data.replace(b"\\u0000", b"\\\\x00")
        doc = orjson.loads(data)
        ev = doc["event"]
        ns = parse_time(doc["@timestamp"])
        ts = _EPOCH + timedelta(microseconds=ns // 1000)
        host = doc.get("host") or {}
        rule, process = doc.get("rule") or {}, doc.get("process") or {}
        severity = ev.get("severity")
        return (str(ev["id"]), ts, str(host.get("id") or ""), str(ev.get("dataset") or ""),
                str(ev.get("kind") or "event"), rule.get("id"), process.get("entity_id"),
                severity if isinstance(severity, int) else None, data.decode()), doc
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def health_summary(h: dict) -> dict:
    """What the hosts table keeps of a sensor.health event."""
    sources = h.get("sources") or {}
    lost = sum((s.get("lost_kernel") or 0) + (s.get("lost_user") or 0) for s in sources.values())
    lost += (h.get("store") or {}).get("dropped") or 0
    nats = h.get("nats") or {}
    lost += nats.get("overflow") or 0
    return {"lost": lost, "queue": nats.get("queued"), "cpu_percent": h.get("cpu_percent"),
            "rss_bytes": h.get("rss_bytes")}


class Writer:
    """One PostgreSQL connection; `write` stores a batch in one transaction, idempotently."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn = None
        self.partitions: set = set()
        self.stored = self.duplicates = 0

    def connect(self):
        self.conn = pg_connect(self.dsn)
        self.conn.autocommit = True
        migrate(self.conn)
        self.partitions = existing_partitions(self.conn)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, rows: list[tuple], docs: list[dict]) -> int:
        """Stores the rows (duplicates ignored) and updates hosts; returns how many were new."""
        if self.conn is None or self.conn.closed:
            self.connect()
        conn = self.conn
        try:
            with conn.transaction():
                ensure_partitions(conn, {r[1].date() for r in rows}, self.partitions)
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (id text, ts timestamptz, host_id text, "
                             "dataset text, kind text, rule_id text, process_entity text, severity integer, "
                             "doc jsonb) ON COMMIT DELETE ROWS")
                with conn.cursor() as cur:
                    with cur.copy(f"COPY incoming ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                        for r in rows:
                            copy.write_row(r)
                    cur.execute(f"INSERT INTO events ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
                                "FROM incoming ON CONFLICT DO NOTHING")
                    new = cur.rowcount
                    cur.execute("INSERT INTO alerts (id, ts, host_id, rule_id, rule_name, severity, process_entity, doc) "
                                "SELECT DISTINCT ON (id) id, ts, host_id, rule_id, doc #>> '{rule,name}', severity, "
                                "process_entity, doc FROM incoming WHERE kind = 'alert' ON CONFLICT DO NOTHING")
                self._hosts(conn, rows, docs)
        except Exception:
            self.partitions = set()  # a rolled-back partition may be in the cache: reread it
            raise
        self.stored += new
        self.duplicates += len(rows) - new
        return new

    def _hosts(self, conn, rows, docs):
        hosts: dict[str, dict] = {}
        for r, doc in zip(rows, docs):
            h = hosts.get(r[2])
            if h is None:
                host = doc.get("host") or {}
                os_ = host.get("os") or {}
                h = hosts[r[2]] = {"name": host.get("name"), "os": os_.get("family") or os_.get("type"),
                                   "kernel": os_.get("kernel"), "version": (doc.get("agent") or {}).get("version"),
                                   "first": r[1], "last": r[1], "health": None}
            h["first"], h["last"] = min(h["first"], r[1]), max(h["last"], r[1])
            if r[3] == "sensor.health" and (h["health"] is None or r[1] > h["health"][0]):
                h["health"] = (r[1], (doc.get("sensor") or {}).get("health") or {})
        for host_id in sorted(hosts):  # one order in every collector: no deadlock between them
            h = hosts[host_id]
            conn.execute("INSERT INTO hosts (id, name, os, kernel, version, first_seen, last_seen) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                         "name = coalesce(EXCLUDED.name, hosts.name), os = coalesce(EXCLUDED.os, hosts.os), "
                         "kernel = coalesce(EXCLUDED.kernel, hosts.kernel), "
                         "version = coalesce(EXCLUDED.version, hosts.version), "
                         "first_seen = least(hosts.first_seen, EXCLUDED.first_seen), "
                         "last_seen = greatest(hosts.last_seen, EXCLUDED.last_seen)",
                         (host_id, h["name"], h["os"], h["kernel"], h["version"], h["first"], h["last"]))
            if h["health"] is not None:
                at, health = h["health"]
                s = health_summary(health)
                conn.execute("UPDATE hosts SET health_at = %s, lost = %s, queue = %s, cpu_percent = %s, "
                             "rss_bytes = %s, health = %s WHERE id = %s AND (health_at IS NULL OR health_at < %s)",
                             (at, s["lost"], s["queue"], s["cpu_percent"], s["rss_bytes"],
                              orjson.dumps(health).decode(), host_id, at))


class Collector:
    """Fetches batches from the durable consumer and hands them to the Writer; acks after commit."""

    def __init__(self, opts: BrokerOptions, dsn: str, *, batch: int = 1000, ack_wait: float = 30.0,
                 durable: str = DURABLE):
        self.opts, self.batch, self.ack_wait, self.durable = opts, batch, ack_wait, durable
        self.writer = Writer(dsn)
        self.bad = self.batches = 0
        self.stop = asyncio.Event()

    async def run(self, duration: float | None = None, ready=None):
        await asyncio.to_thread(self.writer.connect)  # a bad DSN fails here, before any fetch
        nc = await connect(self.opts, "sensor-collect", callbacks={"error": lambda exc: None})
        try:
            js = nc.jetstream()
            sub = await self._stream(js)
            if ready is not None:
                ready()
            deadline = time.monotonic() + duration if duration else None
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    msgs = await sub.fetch(self.batch, timeout=1)
                except Exception as exc:  # nothing waiting, or the cluster is electing a leader
                    if type(exc).__name__ != "TimeoutError":
                        log.debug("fetch: %s", describe(exc))
                        await asyncio.sleep(0.2)
                    continue
                await self._store(msgs)
        finally:
            try:
                await nc.close()
            except Exception:
                pass
            self.writer.close()

    async def _stream(self, js, patience: float = 30.0):
        """The stream and consumer, created if missing; a cluster just started may still be
        electing its JetStream leader (requests time out meanwhile): wait for it, up to `patience`."""
        deadline = time.monotonic() + patience
        while True:
            try:
                await ensure_stream(js, self.opts)
                return await self._subscribe(js)
            except Exception as exc:
                if time.monotonic() >= deadline or type(exc).__name__ not in (
                        "TimeoutError", "ServiceUnavailableError", "NoRespondersError"):
                    raise BrokerError(f"stream {STREAM}: {describe(exc)}") from None
                log.info("nats: JetStream not ready (%s), waiting", describe(exc))
                await asyncio.sleep(0.5)

    async def _subscribe(self, js):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                deliver_policy=DeliverPolicy.ALL, max_ack_pending=20 * self.batch,
                                filter_subject=SUBJECTS)
        return await js.pull_subscribe(SUBJECTS, durable=self.durable, stream=STREAM, config=config)

    async def _store(self, msgs):
        rows, docs, good, bad = [], [], [], []
        for m in msgs:
            decoded = decode(m.data)
            if decoded is None:
                bad.append(m)
            else:
                rows.append(decoded[0])
                docs.append(decoded[1])
                good.append(m)
        backoff = 0.2
        while rows:
            try:
                await asyncio.to_thread(self.writer.write, rows, docs)
                break
            except Exception as exc:  # PostgreSQL restarting, a lost connection: keep the batch, retry
                log.warning("postgres: %s; retrying the batch of %d in %.1fs", describe(exc), len(rows), backoff)
                await asyncio.to_thread(self.writer.close)
                if self.stop.is_set():
                    return  # not acked: redelivered to the next collector
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.batches += 1
        for m in good:
            await m.ack()
        for m in bad:  # never a valid event, never will be: counted, and not redelivered forever
            self.bad += 1
            log.warning("collect: message %s on %s is not an event, dropped", m.metadata.sequence.stream, m.subject)
            await m.term()

    def summary(self) -> str:
        w = self.writer
        return f"{w.stored:,} events stored, {w.duplicates:,} duplicates ignored, {self.bad:,} bad messages dropped"


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
    p.add_argument("--ack-wait", type=float, default=30.0,
                   help="seconds before an unacknowledged batch is redelivered to another collector (30)")
    p.add_argument("--durable", default=DURABLE, help=f"the shared consumer's name ({DURABLE})")
    p.add_argument("--duration", type=float, help="stop after this many seconds")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = BrokerOptions.parse(args.nats_url, user=args.nats_user, password=args.nats_password,
                               creds=args.nats_creds, nkey=args.nats_nkey, tls_ca=args.nats_tls_ca,
                               tls_cert=args.nats_tls_cert, tls_key=args.nats_tls_key, replicas=args.nats_replicas)
    collector = Collector(opts, args.postgres, batch=args.batch, ack_wait=args.ack_wait, durable=args.durable)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, collector.stop.set)
        await collector.run(args.duration, ready=lambda: print(
            f"sensor collect: {','.join(opts.urls)} -> PostgreSQL; SIGTERM stops", file=sys.stderr, flush=True))

    asyncio.run(main())
    print(f"sensor collect: stopped; {collector.summary()}", file=sys.stderr)
    return 0
