"""`sensor events --postgres`: the central store read like the local one, oldest first, or followed."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import orjson

from .collect import pg_connect

# --where fields that are columns: pushed down to an index; the rest are checked by the caller
_COLUMNS = {"event.id": "id", "host.id": "host_id", "event.dataset": "dataset", "event.kind": "kind",
            "rule.id": "rule_id", "process.entity_id": "process_entity"}
PAGE = 5000


def read_events(dsn: str, *, where=(), since_ns: int | None = None, follow: bool = False,
                poll_interval: float = 0.5) -> Iterator[dict]:
    """Stored events matching the column filters of `where`, by @timestamp; `follow` then yields
    each transaction's events once it has committed, in commit-safe order (no event skipped
    because a slower transaction committed it later)."""
    conds, params = [], []
    for field, value in where:
        if field in _COLUMNS:
            conds.append(f"{_COLUMNS[field]} = %s")
            params.append(value)
    if since_ns is not None:
        conds.append("ts >= %s")
        params.append(datetime.fromtimestamp(since_ns / 1e9, timezone.utc))
    conn = pg_connect(dsn)
    conn.autocommit = True
    try:
        if not _has_events(conn):
            if not follow:
                return
            while not _has_events(conn):
                time.sleep(poll_interval)
        # every transaction below the snapshot's xmin has finished: read up to there, then follow
        (horizon,) = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())").fetchone()
        yield from _pages(conn, conds + ["tx < %s"], params + [horizon])
        while follow:
            time.sleep(poll_interval)
            (upto,) = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())").fetchone()
            if int(upto) > int(horizon):
                yield from _pages(conn, conds + ["tx >= %s", "tx < %s"], params + [horizon, upto])
                horizon = upto
    finally:
        conn.close()


def _has_events(conn) -> bool:
    return conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()[0]


def _pages(conn, conds: list[str], params: list) -> Iterator[dict]:
    """Keyset pages by (ts, id): constant memory for any number of events."""
    sql = f"SELECT ts, id, doc::text FROM events WHERE {' AND '.join(conds)}"
    last = None
    while True:
        if last is None:
            rows = conn.execute(f"{sql} ORDER BY ts, id LIMIT {PAGE}", params).fetchall()
        else:
            rows = conn.execute(f"{sql} AND (ts, id) > (%s, %s) ORDER BY ts, id LIMIT {PAGE}",
                                params + list(last)).fetchall()
        for ts, id_, doc in rows:
            yield orjson.loads(doc)
        if len(rows) < PAGE:
            return
        last = (rows[-1][0], rows[-1][1])
