"""The central store's PostgreSQL schema: versioned migrations and day partitions of `events`."""
from __future__ import annotations

import logging
from datetime import date, timedelta

log = logging.getLogger("sensor.fleet.pgschema")

# Each migration runs once, in order, in its own transaction; never edit one that has shipped:
# add the next. An event is stored once per (id, @timestamp): a partitioned table's keys must
# hold its partition key, and one event.id always carries one @timestamp.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "events, alerts, hosts", """
        CREATE TABLE events (
            id             text        NOT NULL,
            ts             timestamptz NOT NULL,
            host_id        text        NOT NULL,
            dataset        text        NOT NULL,
            kind           text        NOT NULL,
            rule_id        text,
            process_entity text,
            severity       integer,
            -- the writing transaction: `sensor events --follow` reads only finished ones in order
            tx             xid8        NOT NULL DEFAULT pg_current_xact_id(),
            doc            jsonb       NOT NULL,
            PRIMARY KEY (id, ts)
        ) PARTITION BY RANGE (ts);
        CREATE INDEX events_ts ON events (ts);
        CREATE INDEX events_host_ts ON events (host_id, ts);
        CREATE INDEX events_dataset_ts ON events (dataset, ts);
        CREATE INDEX events_rule ON events (rule_id) WHERE rule_id IS NOT NULL;
        CREATE INDEX events_process ON events (process_entity) WHERE process_entity IS NOT NULL;
        CREATE INDEX events_severity ON events (severity) WHERE severity IS NOT NULL;
        CREATE INDEX events_tx ON events (tx);

        CREATE TABLE alerts (
            id             text        PRIMARY KEY,
            ts             timestamptz NOT NULL,
            host_id        text        NOT NULL,
            rule_id        text,
            rule_name      text,
            severity       integer,
            process_entity text,
            doc            jsonb       NOT NULL
        );
        CREATE INDEX alerts_ts ON alerts (ts);
        CREATE INDEX alerts_host_ts ON alerts (host_id, ts);

        CREATE TABLE hosts (
            id          text        PRIMARY KEY,
            name        text,
            os          text,
            kernel      text,
            version     text,
            first_seen  timestamptz NOT NULL,
            last_seen   timestamptz NOT NULL,
            health_at   timestamptz,
            lost        bigint,
            queue       bigint,
            cpu_percent real,
            rss_bytes   bigint,
            health      jsonb
        );
    """),
]

_LOCK = 0x73656E736F72  # "sensor": serializes migrations and partition creation across collectors


def migrate(conn) -> int:
    """Applies the migrations this database lacks; returns the version it is at."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "description text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                         (version, description))
            log.info("postgres: migrated to version %d (%s)", version, description)
    return max(v for v, _, _ in MIGRATIONS)


def partition_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


def ensure_partitions(conn, days, known: set) -> None:
    """Creates the day partitions of `events` that `days` need (inside the caller's transaction)."""
    missing = sorted(set(days) - known)
    if not missing:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    for day in missing:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events "
                     f"FOR VALUES FROM ('{day.isoformat()}T00:00:00Z') TO ('{(day + timedelta(days=1)).isoformat()}T00:00:00Z')")
        known.add(day)


def existing_partitions(conn) -> set:
    rows = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'").fetchall()
    out = set()
    for (name,) in rows:
        try:
            out.add(date(int(name[7:11]), int(name[11:13]), int(name[13:15])))
        except ValueError:
            pass
    return out
