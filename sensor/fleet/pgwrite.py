"""Rows into the central store: events decoded from the stream, written in one transaction per
batch (one binary COPY), idempotently, with the hosts table kept up to date."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson

from ..errors import SensorError
from ..schema import parse_time
from .pgschema import ensure_partitions, existing_partitions, migrate

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000

_COLUMNS = ("id", "ts", "host_id", "dataset", "kind", "rule_id", "process_entity", "severity", "doc")

# COPY's binary format (PostgreSQL docs, "COPY", Binary Format): a signature, flags and header
# extension length, then per row a field count and each field as length + bytes (-1: NULL), then
# -1. No escaping: a document goes as it came, whatever bytes its strings hold.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
_FIELDS = len(_COLUMNS).to_bytes(2, "big")
_NULL = b"\xff\xff\xff\xff"
_TS = (8).to_bytes(4, "big")  # timestamptz: int64 microseconds since 2000-01-01
_PG_EPOCH_US = 946_684_800_000_000
_INT4 = (4).to_bytes(4, "big")
_JSONB_V1 = b"\x01"  # jsonb's binary form: a version byte, then the JSON text


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
    """A message as an `events` row, or None when it is no event (counted as bad). A row is
    (id, ts in µs since 1970, host_id, dataset, kind, rule_id, process_entity, severity, the
    document, the row in COPY's binary format up to the document's bytes)."""
    try:
        # jsonb refuses \u0000; orjson writes a NUL that way, so it is stored as the schema's \x00
        if b"\\u0000" in data:
            data = data.replace(b"\\u0000", b"\\\\x00")
        doc = orjson.loads(data)  # also the check that PostgreSQL's jsonb will take it
        ev = doc["event"]
        ts = _timestamp(doc["@timestamp"])
        host = doc.get("host") or {}
        rule, process = doc.get("rule") or {}, doc.get("process") or {}
        severity = ev.get("severity")
        if type(severity) is not int or not -2**31 <= severity < 2**31:
            severity = None
        row = (str(ev["id"]), ts, str(host.get("id") or ""), str(ev.get("dataset") or ""),
               str(ev.get("kind") or "event"), _text(rule.get("id")), _text(process.get("entity_id")), severity, data)
        head = b"".join((_FIELDS, _field(row[0]), _TS, (ts - _PG_EPOCH_US).to_bytes(8, "big", signed=True),
                         _field(row[2]), _field(row[3]), _field(row[4]), _field(row[5]), _field(row[6]),
                         _NULL if severity is None else _INT4 + severity.to_bytes(4, "big", signed=True),
                         (len(data) + 1).to_bytes(4, "big"), _JSONB_V1))
        return row + (head,), doc
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


def _text(value) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _field(value: str | None) -> bytes:
    if value is None:
        return _NULL
    b = value.encode()  # a lone surrogate raises: no event
    return len(b).to_bytes(4, "big") + b


def copy_data(rows) -> list[bytes]:
    """decode()'s rows as the pieces of one binary COPY (joined by the caller, or written in turn)."""
    out = [COPY_SIGNATURE]
    for r in rows:
        out += (r[9], r[8])
    out.append(COPY_TRAILER)
    return out


def _timestamp(value: str) -> int:
    """@timestamp in microseconds since 1970; the sensor's own form (2026-11-24T23:38:01.123456789Z) quickly."""
    if len(value) == 30 and value[19] == "." and value[29] == "Z":
        return (datetime.fromisoformat(value[:26] + "+00:00") - _EPOCH) // _US
    return parse_time(value) // 1000


def when(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


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
        data = b"".join(copy_data(rows))
        try:
            with conn.transaction():
                ensure_partitions(conn, {when(day * _DAY_US).date() for day in {r[1] // _DAY_US for r in rows}},
                                  self.partitions)
                try:
                    with conn.transaction():  # a savepoint: nearly every batch holds only new events
                        self._copy(conn, "events", data)
                    new = len(rows)
                except psycopg.errors.UniqueViolation:  # a redelivery: keep what is not stored yet
                    new = self._insert_new(conn, data)
                alerts = [r for r in rows if r[4] == "alert"]
                if alerts:
                    conn.cursor().executemany(
                        "INSERT INTO alerts (id, ts, host_id, rule_id, rule_name, severity, process_entity, doc) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb #>> '{rule,name}', %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(r[0], when(r[1]), r[2], r[5], r[8].decode(), r[7], r[6], r[8].decode()) for r in alerts])
                self._hosts(conn, rows, docs)
        except Exception:
            self.partitions = set()  # a rolled-back partition may be in the cache: reread it
            raise
        self.stored += new
        self.duplicates += len(rows) - new
        return new

    @staticmethod
    def _copy(conn, table: str, data: bytes):
        with conn.cursor().copy(f"COPY {table} ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT binary)") as copy:
            copy.write(data)

    def _insert_new(self, conn, data: bytes) -> int:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (id text, ts timestamptz, host_id text, "
                     "dataset text, kind text, rule_id text, process_entity text, severity integer, "
                     "doc jsonb) ON COMMIT DELETE ROWS")
        self._copy(conn, "incoming", data)
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
            ups.append((host_id, h["name"], h["os"], h["kernel"], h["version"], when(h["first"]), when(h["last"])))
            if h["health"] is not None:
                at, health = when(h["health"][0]), h["health"][1]
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
