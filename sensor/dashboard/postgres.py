"""The panel over the fleet's PostgreSQL (sensor/fleet/pgschema.py), with alert states in a table of its own."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import orjson

from ..fleet.collect import pg_connect
from ..fleet.pgschema import migrate
from . import queries, tree

# The logical tables the shared SQL reads, as views over `events` (PostgreSQL inlines each CTE, so
# a query's own conditions reach the (dataset, ts) index).
PRELUDE = """
  responses AS (SELECT doc->'sensor'->'response'->'alert'->>'id' AS alert_id, ts, host_id,
                       doc->'sensor'->'response'->>'action' AS action, doc->'sensor'->'response'->>'result' AS result,
                       (doc->'sensor'->'response'->>'dry_run')::boolean AS dry_run, doc
                FROM events WHERE dataset = 'response'),
  blocked AS (SELECT id, ts, host_id, doc FROM events WHERE dataset = 'process' AND doc->'sensor'->>'blocked' = 'true'),
  health AS (SELECT ts, host_id, doc FROM events WHERE dataset = 'sensor.health'),
  alert_states AS (SELECT alert_id, state, note, by_user, state_at FROM panel_alert_states)
"""
POSTGRES = queries.Dialect("postgres", prelude=PRELUDE,
                           technique_ids="jsonb_array_elements(x.doc->'threat'->'technique')->>'id'")
STATE_TABLES = """
  CREATE TABLE IF NOT EXISTS panel_alert_states (
      alert_id text PRIMARY KEY, state text NOT NULL, note text, by_user text, state_at timestamptz NOT NULL);
  CREATE TABLE IF NOT EXISTS panel_alert_state_log (
      alert_id text NOT NULL, state text NOT NULL, note text, by_user text, state_at timestamptz NOT NULL);
"""


class PostgresBackend:
    """Same methods as LocalBackend; one connection per serving thread."""

    kind = "postgres"
    dialect = POSTGRES

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        conn = self._conn()
        migrate(conn)  # a fleet with no collector yet still gets the tables the pages read
        conn.execute(STATE_TABLES)

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = pg_connect(self.dsn)
            conn.autocommit = True
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def run(self, sql: str, params: list) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    def set_state(self, alert_id: str, state: str, note: str, user: str) -> dict:
        at = datetime.now(timezone.utc)
        conn = self._conn()
        with conn.transaction():
            conn.execute("INSERT INTO panel_alert_states VALUES (%s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO UPDATE "
                         "SET state = EXCLUDED.state, note = EXCLUDED.note, by_user = EXCLUDED.by_user, "
                         "state_at = EXCLUDED.state_at", (alert_id, state, note, user, at))
            conn.execute("INSERT INTO panel_alert_state_log VALUES (%s, %s, %s, %s, %s)", (alert_id, state, note, user, at))
        return {"alert_id": alert_id, "state": state, "note": note, "by": user, "at": at.isoformat()}

    def hosts(self) -> list[dict]:
        rows = self.run("SELECT id, name, os, kernel, version, first_seen, last_seen, health_at, health::text "
                        "FROM hosts ORDER BY name, id", [])
        return [queries.host_row(host_id, name, " ".join(filter(None, (os_, kernel))), version, first, last, health_at,
                                 orjson.loads(health) if health else {})
                for host_id, name, os_, kernel, version, first, last, health_at, health in rows]

    def process_tree(self, alert: dict) -> list:
        # children start after the alert's process did: bound the scan of process events by it
        since = alert["ts"] - timedelta(days=1)
        lifecycle = "dataset IN ('process', 'host.processes')"

        def parents(ids):
            return dict(self.run(f"SELECT process_entity, doc->'process'->'parent'->>'entity_id' FROM events "
                                 f"WHERE process_entity = ANY(%s) AND {lifecycle} "
                                 f"AND doc->'process'->'parent'->>'entity_id' IS NOT NULL", [ids]))

        def children(ids):
            return self.run(f"SELECT DISTINCT process_entity, doc->'process'->'parent'->>'entity_id' FROM events "
                            f"WHERE {lifecycle} AND ts >= %s AND doc->'process'->'parent'->>'entity_id' = ANY(%s)",
                            [since, ids])

        def details(ids):
            rows = self.run("SELECT doc::text FROM events WHERE process_entity = ANY(%s) ORDER BY ts LIMIT 5000", [ids])
            return [orjson.loads(r[0]) for r in rows]

        return tree.around(alert["doc"], parents, children, details)

    def trigger(self, alert: dict) -> dict | None:
        trig = ((alert["doc"].get("sensor") or {}).get("trigger") or {}).get("id")
        if not trig:
            return None
        rows = self.run("SELECT doc::text FROM events WHERE id = %s LIMIT 1", [trig])
        return orjson.loads(rows[0][0]) if rows else None

    def close(self):
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
