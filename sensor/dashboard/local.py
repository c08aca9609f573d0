"""The panel over one host's store: the DuckDB index, and alert states in DATA_DIR/panel/states.jsonl."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import orjson

from ..backend import system
from ..errors import SensorError
from . import queries, tree
from .index import LocalIndex


class LocalBackend:
    """Same methods as PostgresBackend: what the pages ask of a store."""

    kind = "local"

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        if not (self.data_dir / "events").is_dir():
            raise SensorError(f"no events under {self.data_dir}", hint="see --data-dir, or start `sensor run` first")
        self.index = LocalIndex(self.data_dir)
        self.states_path = self.data_dir / "panel" / "states.jsonl"
        self._states_mtime = None
        self._write_lock = threading.Lock()
        self.index.con.execute("CREATE OR REPLACE TEMP TABLE alert_states (alert_id VARCHAR PRIMARY KEY, "
                               "state VARCHAR, note VARCHAR, by_user VARCHAR, state_at TIMESTAMPTZ)")
        self.dialect = queries.DUCKDB
        self.refresh(force=True)

    def refresh(self, force: bool = False):
        self.index.refresh(force)
        self._load_states()

    def run(self, sql: str, params: list) -> list[tuple]:
        self.refresh()
        # temp tables live in the connection that made them: every query goes through it, serialized
        with self.index.lock:
            return self.index.con.execute(sql, params).fetchall()

    # -- states: one JSON line per change, the last for an alert wins; the file is the record --
    def _load_states(self):
        try:
            mtime = self.states_path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._states_mtime:
            return
        latest = {}
        with open(self.states_path, "rb") as f:
            for line in f:
                try:
                    r = orjson.loads(line)
                    latest[r["alert_id"]] = r
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line of a killed panel
        with self.index.lock:
            c = self.index.con
            c.execute("DELETE FROM alert_states")
            if latest:
                c.executemany("INSERT INTO alert_states VALUES (?, ?, ?, ?, ?)",
                              [[r["alert_id"], r["state"], r.get("note", ""), r.get("by", ""), r["at"]]
                               for r in latest.values()])
            self._states_mtime = mtime

    def set_state(self, alert_id: str, state: str, note: str, user: str) -> dict:
        rec = {"alert_id": alert_id, "state": state, "note": note, "by": user,
               "at": datetime.now(timezone.utc).isoformat()}
        with self._write_lock:
            fd = os.open(self.states_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | system.OPEN_FLAGS, 0o600)
            try:
                os.write(fd, orjson.dumps(rec) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        self._load_states()
        return rec

    # -- pages --
    def hosts(self) -> list[dict]:
        rows = self.run("""SELECT h.host_id, CAST(h.doc AS TEXT), f.first_seen, f.last_seen FROM
            (SELECT host_id, max(ts) AS ts FROM health GROUP BY host_id) AS m
            JOIN health h ON h.host_id = m.host_id AND h.ts = m.ts
            JOIN (SELECT host_id, min(ts) AS first_seen, max(ts) AS last_seen FROM
                  (SELECT host_id, ts FROM lineage UNION ALL SELECT host_id, ts FROM health
                   UNION ALL SELECT host_id, ts FROM alerts) GROUP BY host_id) AS f ON f.host_id = h.host_id
            ORDER BY h.host_id""", [])
        out, seen = [], set()
        for host_id, doc, first, last in rows:
            if host_id in seen:
                continue
            seen.add(host_id)
            out.append(host_row(host_id, orjson.loads(doc), first, last))
        return out

    def process_tree(self, alert: dict) -> list:
        c = self.index.cursor()

        def parents(ids):
            rows = c.execute("SELECT entity_id, parent_entity_id FROM lineage WHERE entity_id IN (SELECT unnest(?)) "
                             "AND parent_entity_id IS NOT NULL", [ids]).fetchall()
            return dict(rows)

        def children(ids):
            return c.execute("SELECT DISTINCT entity_id, parent_entity_id FROM lineage "
                             "WHERE parent_entity_id IN (SELECT unnest(?))", [ids]).fetchall()

        def details(ids):
            # only the segments where these processes started, ran or ended are read
            segs = [r[0] for r in c.execute("SELECT DISTINCT seg FROM lineage WHERE entity_id IN (SELECT unnest(?))",
                                            [ids]).fetchall()]
            mine = sorted(s for s in segs if s)
            return self.events_of(self.index.segment_files(self._between(mine[0], mine[-1])) if mine else [], ids)

        try:
            return tree.around(alert["doc"], parents, children, details)
        finally:
            c.close()

    def _between(self, first: str, last: str) -> list[str]:
        rows = self.index.cursor().execute("SELECT stem FROM segs WHERE stem BETWEEN ? AND ? ORDER BY stem LIMIT 32",
                                           [first, last]).fetchall()
        return [r[0] for r in rows]

    def events_of(self, files: list[str], entities: list[str], limit: int = 5000) -> list[dict]:
        import duckdb

        from ..query import objects_sql

        if not files:
            return []
        try:
            rows = self.index.cursor().execute(
                f"SELECT CAST(json AS TEXT) FROM {objects_sql(files)} WHERE json->>'$.process.entity_id' "
                f"IN (SELECT unnest(?)) LIMIT {limit}", [entities]).fetchall()
        except duckdb.IOException:  # a segment compressed meanwhile: the next view reads it anew
            return []
        return [orjson.loads(r[0]) for r in rows]

    def trigger(self, alert: dict) -> dict | None:
        trig = ((alert["doc"].get("sensor") or {}).get("trigger") or {}).get("id")
        if not trig:
            return None
        seg = self.run("SELECT seg FROM alerts WHERE id = ?", [alert["id"]])
        if not seg:
            return None
        stems = [r[0] for r in self.index.cursor().execute(
            "SELECT stem FROM segs WHERE stem <= ? ORDER BY stem DESC LIMIT 2", [seg[0][0]]).fetchall()]
        import duckdb

        from ..query import objects_sql

        try:
            rows = self.index.cursor().execute(
                f"SELECT CAST(json AS TEXT) FROM {objects_sql(self.index.segment_files(stems))} "
                f"WHERE json->>'$.event.id' = ? LIMIT 1", [trig]).fetchall()
        except duckdb.IOException:
            return None
        return orjson.loads(rows[0][0]) if rows else None

    def close(self):
        self.index.close()


def host_row(host_id: str, doc: dict, first, last) -> dict:
    """A hosts-page row from the host's latest sensor.health event."""
    host = doc.get("host") or {}
    os_ = host.get("os") or {}
    return queries.host_row(host_id, host.get("name"), " ".join(filter(None, (os_.get("family") or os_.get("type"),
                                                                              os_.get("kernel")))),
                            (doc.get("agent") or {}).get("version"), first, last, doc.get("@timestamp"),
                            (doc.get("sensor") or {}).get("health") or {})
