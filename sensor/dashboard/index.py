"""The panel's index of a local store: alerts, responses, blocked execs, health and process lineage
of each segment, extracted once by DuckDB into DATA_DIR/panel/index.duckdb."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..query import segment_files
from ..store import _stem

log = logging.getLogger("sensor.dashboard")

VERSION = 2  # bump when a table below changes: the index is then built again from the segments
# The panel's tables have the fleet's column names (sensor/fleet/pgschema.py), so one SQL serves both.
TABLES = {
    "alerts": "id VARCHAR, ts TIMESTAMPTZ, host_id VARCHAR, rule_id VARCHAR, rule_name VARCHAR, "
              "severity INTEGER, process_entity VARCHAR, doc JSON, seg VARCHAR",
    "responses": "alert_id VARCHAR, ts TIMESTAMPTZ, host_id VARCHAR, action VARCHAR, result VARCHAR, "
                 "dry_run BOOLEAN, doc JSON, seg VARCHAR",
    "blocked": "id VARCHAR, ts TIMESTAMPTZ, host_id VARCHAR, doc JSON, seg VARCHAR",
    "health": "ts TIMESTAMPTZ, host_id VARCHAR, doc JSON, seg VARCHAR",
    # process starts, snapshots and exits: enough to walk a tree; details come from the segments
    "lineage": "ts TIMESTAMPTZ, host_id VARCHAR, entity_id VARCHAR, parent_entity_id VARCHAR, "
               "action VARCHAR, seg VARCHAR",
    # indexed: bytes of a plain (open) segment read so far, up to its last whole line
    "segs": "stem VARCHAR PRIMARY KEY, file VARCHAR, size BIGINT, mtime DOUBLE, indexed BIGINT",
}


class LocalIndex:
    """Keeps the index in step with the segments; `refresh` is cheap when nothing changed."""

    def __init__(self, data_dir, *, min_interval: float = 1.0):
        import duckdb

        self.data_dir = Path(data_dir)
        self.min_interval = min_interval
        self.lock = threading.Lock()
        self._checked = 0.0
        path = self.data_dir / "panel" / "index.duckdb"
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            self.con = duckdb.connect(str(path))
            self.path = str(path)
        except (OSError, duckdb.Error) as exc:  # read-only data dir, or another panel holds it
            log.warning("dashboard: index kept in memory (%s: %s)", path, str(exc).splitlines()[0])
            self.con = duckdb.connect(":memory:")
            self.path = ":memory:"
        self._schema()

    def _schema(self):
        c = self.con
        c.execute("CREATE TABLE IF NOT EXISTS index_version (version INTEGER)")
        row = c.execute("SELECT max(version) FROM index_version").fetchone()
        if row[0] != VERSION:
            for name in TABLES:
                c.execute(f"DROP TABLE IF EXISTS {name}")
            c.execute("DELETE FROM index_version")
            c.execute("INSERT INTO index_version VALUES (?)", [VERSION])
        for name, cols in TABLES.items():
            c.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")

    def cursor(self):
        """A connection for one request's thread (DuckDB connections are not shared by threads)."""
        return self.con.cursor()

    def refresh(self, force: bool = False) -> int:
        """Indexes new or grown segments and forgets pruned ones; returns how many were read."""
        if not force and time.monotonic() - self._checked < self.min_interval:
            return 0
        with self.lock:
            if not force and time.monotonic() - self._checked < self.min_interval:
                return 0
            n = self._refresh()
            self._checked = time.monotonic()
            return n

    def _refresh(self) -> int:
        c = self.con
        known = {r[0]: r[1:] for r in c.execute("SELECT stem, file, size, mtime, indexed FROM segs").fetchall()}
        now: dict[str, tuple] = {}
        for f in segment_files(self.data_dir):
            try:
                st = os.stat(f)
            except FileNotFoundError:
                continue
            now[_stem(Path(f).name)] = (f, st.st_size, st.st_mtime)
        gone = [s for s in known if s not in now]
        changed = [s for s, v in now.items() if known.get(s, ())[:3] != v]
        if not gone and not changed:
            return 0
        c.execute("BEGIN")
        try:
            read = 0
            for stem in sorted(gone + changed):
                old = known.get(stem)
                file = now[stem][0] if stem in now else None
                # the open segment grows: only its new whole lines are read
                grown = old is not None and file == old[0] and not file.endswith(".zst")
                if not grown:
                    for name in TABLES:
                        c.execute(f"DELETE FROM {name} WHERE {'stem' if name == 'segs' else 'seg'} = ?", [stem])
                if file is None:
                    continue
                _, size, mtime = now[stem]
                if file.endswith(".zst"):
                    ok, indexed = self._index_segment(stem, file), size
                else:
                    ok, indexed = self._index_tail(stem, file, old[3] if grown else 0)
                if ok:
                    c.execute("INSERT OR REPLACE INTO segs VALUES (?, ?, ?, ?, ?)", [stem, file, size, mtime, indexed])
                    read += 1
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return read

    def _index_tail(self, stem: str, file: str, start: int) -> tuple[bool, int]:
        """Indexes a plain segment's whole lines from byte `start` (a copy of them, so lines the
        writer appends meanwhile wait for the next refresh); returns (ok, bytes indexed)."""
        import tempfile

        try:
            with open(file, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:  # compressed meanwhile: the next refresh indexes the .zst
            return False, start
        end = data.rfind(b"\n") + 1  # a last line still being written waits
        if end == 0:
            return True, start
        tmpdir = self.data_dir / "panel" if self.path != ":memory:" else None
        with tempfile.NamedTemporaryFile(suffix=".jsonl", dir=tmpdir) as tmp:
            tmp.write(data[:end])
            tmp.flush()
            ok = self._index_segment(stem, tmp.name)
        return ok, start + end if ok else start

    def _index_segment(self, stem: str, file: str) -> bool:
        import duckdb

        c = self.con
        lit = "'" + file.replace("'", "''") + "'"
        try:
            # one pass: the small columns of every process event, the whole document only of the few
            # events the pages show (alerts, responses, blocked execs, health)
            c.execute(f"""CREATE OR REPLACE TEMP TABLE seg AS
                SELECT kind, dataset, TRY_CAST(json->>'$."@timestamp"' AS TIMESTAMPTZ) AS ts,
                       json->>'$.host.id' AS host_id, json->>'$.event.id' AS id,
                       json->>'$.process.entity_id' AS entity, json->>'$.process.parent.entity_id' AS parent,
                       json->>'$.event.action' AS action, json->>'$.sensor.blocked' = 'true' AS blocked,
                       CASE WHEN kind = 'alert' OR dataset IN ('response', 'sensor.health')
                                 OR json->>'$.sensor.blocked' = 'true' THEN json END AS doc
                FROM (SELECT json, json->>'$.event.kind' AS kind, json->>'$.event.dataset' AS dataset
                      FROM read_json_objects([{lit}], format='newline_delimited', ignore_errors=true)
                      WHERE json IS NOT NULL) AS j
                WHERE kind = 'alert' OR dataset IN ('response', 'sensor.health', 'process', 'host.processes')""")
        except duckdb.IOException:  # compressed or pruned since it was listed: the next refresh sees it
            return False
        s = [stem]
        c.execute("""INSERT INTO alerts SELECT id, ts, host_id, doc->>'$.rule.id', doc->>'$.rule.name',
                     TRY_CAST(doc->>'$.event.severity' AS INTEGER), entity, doc, ?
                     FROM seg WHERE kind = 'alert'""", s)
        c.execute("""INSERT INTO responses SELECT doc->>'$.sensor.response.alert.id', ts, host_id,
                     doc->>'$.sensor.response.action', doc->>'$.sensor.response.result',
                     TRY_CAST(doc->>'$.sensor.response.dry_run' AS BOOLEAN), doc, ?
                     FROM seg WHERE dataset = 'response'""", s)
        c.execute("INSERT INTO blocked SELECT id, ts, host_id, doc, ? FROM seg WHERE dataset = 'process' AND blocked", s)
        c.execute("INSERT INTO health SELECT ts, host_id, doc, ? FROM seg WHERE dataset = 'sensor.health'", s)
        c.execute("""INSERT INTO lineage SELECT ts, host_id, entity, parent, action, ?
                     FROM seg WHERE dataset IN ('process', 'host.processes') AND entity IS NOT NULL""", s)
        c.execute("DROP TABLE seg")
        return True

    def segment_files(self, stems: list[str]) -> list[str]:
        """The files of these indexed segments, oldest first."""
        if not stems:
            return []
        rows = self.cursor().execute("SELECT file FROM segs WHERE stem IN (SELECT unnest(?)) ORDER BY stem",
                                     [stems]).fetchall()
        return [r[0] for r in rows]

    def close(self):
        self.con.close()
