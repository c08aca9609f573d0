"""Rows into the central store: events decoded from the stream, written in one transaction per
batch, idempotently, with the hosts table kept up to date."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson

from ..errors import SensorError
from ..schema import parse_time
from .pgschema import ensure_partitions, existing_partitions, migrate

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
        ts = _timestamp(doc["@timestamp"])
        host = doc.get("host") or {}
        rule, process = doc.get("rule") or {}, doc.get("process") or {}
        severity = ev.get("severity")
        return (str(ev["id"]), ts, str(host.get("id") or ""), str(ev.get("dataset") or ""),
                str(ev.get("kind") or "event"), rule.get("id"), process.get("entity_id"),
                severity if isinstance(severity, int) else None, data.decode()), doc
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def _timestamp(value: str) -> datetime:
    """@timestamp to microseconds; the sensor's own form (2026-11-24T23:38:01.123456789Z) quickly."""
    if len(value) == 30 and value[19] == "." and value[29] == "Z":
        return datetime.fromisoformat(value[:26] + "+00:00")
    return _EPOCH + timedelta(microseconds=parse_time(value) // 1000)


def health_summary(h: dict) -> dict:
    """What the hosts table keeps of a sensor.health event."""
    sources = h.get("sources") or {}
    lost = sum((s.get("lost_kernel") or 0) + (s.get("lost_user") or 0) for s in sources.values())
    lost += (h.get("store") or {}).get("dropped") or 0
    nats = h.get("nats") or {}
    lost += (nats.get("overflow") or 0) + (nats.get("refused") or 0)
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

    def write(self, rows: list[tuple], docs: list[dict | None]) -> int:
        """Stores decode()'s rows (repeats ignored) and updates hosts from their documents (None
        where the caller dropped one the hosts table does not need); returns how many were new."""
        import psycopg

        if self.conn is None or self.conn.closed:
            self.connect()
        conn = self.conn
        try:
            with conn.transaction():
                ensure_partitions(conn, {r[1].date() for r in rows}, self.partitions)
                try:
                    with conn.transaction():  # a savepoint: nearly every batch holds only new events
                        self._copy(conn, "events", rows)
                    new = len(rows)
                except psycopg.errors.UniqueViolation:  # a redelivery: keep what is not stored yet
                    new = self._insert_new(conn, rows)
                alerts = [r for r in rows if r[4] == "alert"]
                if alerts:
                    conn.cursor().executemany(
                        "INSERT INTO alerts (id, ts, host_id, rule_id, rule_name, severity, process_entity, doc) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb #>> '{rule,name}', %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(r[0], r[1], r[2], r[5], r[8], r[7], r[6], r[8]) for r in alerts])
                self._hosts(conn, rows, docs)
        except Exception:
            self.partitions = set()  # a rolled-back partition may be in the cache: reread it
            raise
        self.stored += new
        self.duplicates += len(rows) - new
        return new

    @staticmethod
    def _copy(conn, table: str, rows):
        with conn.cursor().copy(f"COPY {table} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)

    def _insert_new(self, conn, rows) -> int:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (id text, ts timestamptz, host_id text, "
                     "dataset text, kind text, rule_id text, process_entity text, severity integer, "
                     "doc jsonb) ON COMMIT DELETE ROWS")
        self._copy(conn, "incoming", rows)
        return conn.execute(f"INSERT INTO events ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
                            "FROM incoming ON CONFLICT DO NOTHING").rowcount

    def _hosts(self, conn, rows, docs):
        hosts: dict[str, dict] = {}
        for r, doc in zip(rows, docs):
            h = hosts.get(r[2])
            if h is None:
                doc = doc or {}
                host = doc.get("host") or {}
                os_ = host.get("os") or {}
                h = hosts[r[2]] = {"name": host.get("name"), "os": os_.get("family") or os_.get("type"),
                                   "kernel": os_.get("kernel"), "version": (doc.get("agent") or {}).get("version"),
                                   "first": r[1], "last": r[1], "health": None}
            elif r[1] < h["first"]:
                h["first"] = r[1]
            elif r[1] > h["last"]:
                h["last"] = r[1]
            if r[3] == "sensor.health" and doc is not None and (h["health"] is None or r[1] > h["health"][0]):
                h["health"] = (r[1], (doc.get("sensor") or {}).get("health") or {})
        ups, healths = [], []
        for host_id in sorted(hosts):  # one order in every collector: no deadlock between them
            h = hosts[host_id]
            ups.append((host_id, h["name"], h["os"], h["kernel"], h["version"], h["first"], h["last"]))
            if h["health"] is not None:
                at, health = h["health"]
                s = health_summary(health)
                healths.append((at, s["lost"], s["queue"], s["cpu_percent"], s["rss_bytes"],
                                orjson.dumps(health).decode(), host_id, at))
        cur = conn.cursor()  # executemany: one round trip (psycopg pipelines it)
        cur.executemany("INSERT INTO hosts (id, name, os, kernel, version, first_seen, last_seen) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                        "name = coalesce(EXCLUDED.name, hosts.name), os = coalesce(EXCLUDED.os, hosts.os), "
                        "kernel = coalesce(EXCLUDED.kernel, hosts.kernel), "
                        "version = coalesce(EXCLUDED.version, hosts.version), "
                        "first_seen = least(hosts.first_seen, EXCLUDED.first_seen), "
                        "last_seen = greatest(hosts.last_seen, EXCLUDED.last_seen)", ups)
        if healths:
            cur.executemany("UPDATE hosts SET health_at = %s, lost = %s, queue = %s, cpu_percent = %s, "
                            "rss_bytes = %s, health = %s WHERE id = %s AND (health_at IS NULL OR health_at < %s)",
                            healths)
