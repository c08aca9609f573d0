"""`sensor dataset export --from-store`: a whole host's stored events as one labelled Parquet table
per dataset, with a manifest, written by DuckDB."""
from __future__ import annotations

import re
import time
from pathlib import Path

import orjson

from .. import __version__
from ..dataset import DatasetError
from ..filehash import sha256_file
from ..query import objects_sql, segment_files
from ..schema import SCHEMA_VERSION, rfc3339
from . import labels

STORE_FORMATS = ("parquet",)

# (column, DuckDB type): the fields docs/schema.md lists, typed; the rest of an event stays in `doc`.
COMMON = [("@timestamp", "TIMESTAMPTZ"), ("event.id", "VARCHAR"), ("event.sequence", "UBIGINT"),
          ("event.kind", "VARCHAR"), ("event.dataset", "VARCHAR"), ("event.module", "VARCHAR"),
          ("event.category", "VARCHAR[]"), ("event.type", "VARCHAR[]"), ("event.action", "VARCHAR"),
          ("event.outcome", "VARCHAR"), ("event.duration", "BIGINT"),
          ("host.id", "VARCHAR"), ("host.name", "VARCHAR"), ("host.hostname", "VARCHAR"),
          ("host.boot.id", "VARCHAR"), ("labels.run", "VARCHAR")]
ACTOR = [("process.pid", "BIGINT"), ("process.thread.id", "BIGINT"), ("process.entity_id", "VARCHAR"),
         ("process.start", "TIMESTAMPTZ"), ("process.executable", "VARCHAR"), ("process.name", "VARCHAR"),
         ("process.args", "VARCHAR[]"), ("process.args_count", "INTEGER"), ("process.command_line", "VARCHAR"),
         ("process.parent.pid", "BIGINT"), ("process.parent.entity_id", "VARCHAR"),
         ("user.id", "VARCHAR"), ("user.name", "VARCHAR")]
FILE = [("file.path", "VARCHAR"), ("file.name", "VARCHAR"), ("file.directory", "VARCHAR"),
        ("file.extension", "VARCHAR"), ("file.type", "VARCHAR"), ("file.mode", "VARCHAR"),
        ("file.uid", "VARCHAR"), ("file.gid", "VARCHAR"), ("file.inode", "UBIGINT"), ("file.device", "VARCHAR"),
        ("file.hash.sha256", "VARCHAR"), ("file.target_path", "VARCHAR"), ("file.original.path", "VARCHAR"),
        ("file.write_count", "BIGINT"), ("file.write_bytes", "BIGINT")]
NETWORK = [("source.ip", "VARCHAR"), ("source.port", "INTEGER"), ("destination.ip", "VARCHAR"),
           ("destination.port", "INTEGER"), ("source.bytes", "BIGINT"), ("destination.bytes", "BIGINT"),
           ("network.bytes", "BIGINT"), ("network.transport", "VARCHAR"), ("network.type", "VARCHAR"),
           ("network.direction", "VARCHAR"), ("network.protocol", "VARCHAR"), ("network.netns", "UBIGINT")]
DNS = [("dns.type", "VARCHAR"), ("dns.id", "INTEGER"), ("dns.op_code", "VARCHAR"),
       ("dns.header_flags", "VARCHAR[]"), ("dns.question.name", "VARCHAR"), ("dns.question.type", "VARCHAR"),
       ("dns.question.class", "VARCHAR"), ("dns.response_code", "VARCHAR"), ("dns.resolved_ip", "VARCHAR[]")]
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "process": ACTOR + [("process.filename", "VARCHAR"), ("process.working_directory", "VARCHAR"),
                        ("process.exit_code", "BIGINT"), ("process.exit_signal", "INTEGER"),
                        ("process.core_dumped", "BOOLEAN"), ("process.end", "TIMESTAMPTZ"),
                        ("process.executable_written", "BOOLEAN"), ("process.parent.start", "TIMESTAMPTZ"),
                        ("process.parent.executable", "VARCHAR"), ("process.parent.name", "VARCHAR"),
                        ("process.parent.command_line", "VARCHAR"), ("process.cgroup.id", "UBIGINT"),
                        ("process.session_id", "VARCHAR"), ("user.audit.id", "VARCHAR")],
    "file": ACTOR + FILE,
    "network": ACTOR + NETWORK,
    "network.dns": ACTOR + NETWORK + DNS,
    "network.packets": NETWORK + DNS + [("source.mac", "VARCHAR"), ("destination.mac", "VARCHAR"),
                                        ("url.domain", "VARCHAR"), ("http.request.method", "VARCHAR"),
                                        ("tls.client.server_name", "VARCHAR"),
                                        ("observer.ingress.interface.name", "VARCHAR")],
    "security": ACTOR + [("security.syscall", "VARCHAR"), ("security.args", "UBIGINT[]"),
                         ("security.return", "BIGINT"), ("security.error", "VARCHAR"),
                         ("target.process.pid", "BIGINT"), ("target.user.id", "VARCHAR"),
                         ("user.changes.id", "VARCHAR"), ("file.path", "VARCHAR")],
    "alert": ACTOR + [("event.severity", "INTEGER"), ("event.reason", "VARCHAR"), ("rule.id", "VARCHAR"),
                      ("rule.name", "VARCHAR"), ("rule.level", "VARCHAR"), ("sensor.trigger.id", "VARCHAR"),
                      ("sensor.trigger.dataset", "VARCHAR"), ("file.path", "VARCHAR"),
                      ("destination.ip", "VARCHAR"), ("destination.port", "INTEGER")],
    "host.metrics": [(f"host.metrics.{f}", "DOUBLE") for f in (
        "cpu.usage", "cpu.user", "cpu.system", "cpu.idle", "cpu.iowait", "cpu.steal", "cpu.count",
        "cpu.load.1m", "cpu.load.5m", "cpu.load.15m", "memory.total", "memory.available", "memory.used",
        "memory.percent", "swap.used", "swap.percent")],
    "sensor.health": [(f"sensor.health.{f}", t) for f, t in (
        ("uptime_s", "DOUBLE"), ("cpu_seconds", "DOUBLE"), ("cpu_percent", "DOUBLE"), ("rss_bytes", "BIGINT"),
        ("store.written", "BIGINT"), ("store.dropped", "BIGINT"), ("final", "BOOLEAN"))],
}


def columns(dataset: str | None) -> list[tuple[str, str]]:
    seen, out = set(), []
    for name, typ in COMMON + COLUMNS.get(dataset or "", []):
        if name not in seen:
            seen.add(name)
            out.append((name, typ))
    return out


def _json_path(name: str) -> str:
    return "$." + ".".join(f'"{p}"' if not re.fullmatch(r"[A-Za-z_]\w*", p) else p for p in name.split("."))


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _rest_patch(cols) -> str:
    """A JSON merge patch (RFC 7396) that removes the columns' fields: what is left is `doc`."""
    patch: dict = {}
    for name, _ in cols:
        node, parts = patch, name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if node is None:
                break
        else:
            node[parts[-1]] = None
    return orjson.dumps(patch).decode()


def _select(cols) -> str:
    out = []
    for name, typ in cols:
        raw = f"doc->'{_json_path(name)}'" if typ.endswith("[]") else f"doc->>'{_json_path(name)}'"
        out.append(f'TRY_CAST({raw} AS {typ}) AS "{name}"')
    rest = _prune(f"json_merge_patch(doc, {_sql_str(_rest_patch(cols))})::VARCHAR")
    out += ["label", "label_source", f"{rest}::JSON AS doc"]
    return ", ".join(out)


def _prune(expr: str, depth: int = 5) -> str:
    """Drops the empty objects a merge patch leaves (RFC 7396 adds one for every path a patch names
    that the event lacks). Inside a JSON string a quote is escaped, so `{"` and `,"` start keys."""
    for _ in range(depth):  # one level of nesting per pass
        expr = (f"regexp_replace(regexp_replace({expr}, ',\"[^\"\\\\]*\":\\{{\\}}', '', 'g'), "
                f"'\\{{\"[^\"\\\\]*\":\\{{\\}},?', '{{', 'g')")
    return expr


def table_name(dataset: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", dataset) if dataset else "unknown"


def export(data_dir, fmt: str, out, *, threads: int | None = None) -> dict:
    import duckdb

    if fmt not in STORE_FORMATS:
        raise DatasetError(f"--format {fmt} with --from-store: the store exports as {', '.join(STORE_FORMATS)} only")
    data_dir, out = Path(data_dir), Path(out)
    files = segment_files(data_dir)
    if not files:
        raise DatasetError(f"--from-store {data_dir}: no events under {data_dir / 'events'}",
                           hint="give the --data-dir of a `sensor run`")
    wins = labels.windows(data_dir)
    con = duckdb.connect(":memory:", config={"threads": threads} if threads else {})
    try:
        con.execute("CREATE TEMP TABLE windows (n INTEGER, t0 TIMESTAMPTZ, t1 TIMESTAMPTZ, label VARCHAR)")
        if wins:
            con.executemany("INSERT INTO windows VALUES (?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?)",
                            [(i, w["from"], w["to"], w["label"]) for i, w in enumerate(wins)])
        # the window added last that holds the event wins; then the event's run label
        con.execute(f"""
            CREATE TEMP TABLE ev AS
            WITH raw AS (SELECT row_number() OVER () AS r, json AS doc, json->>'$.event.dataset' AS dataset,
                                TRY_CAST(json->>'$."@timestamp"' AS TIMESTAMPTZ) AS ts FROM {objects_sql(files)}),
                 won AS (SELECT raw.r, arg_max(w.label, w.n) AS label
                         FROM raw JOIN windows w ON raw.ts >= w.t0 AND raw.ts < w.t1 GROUP BY raw.r)
            SELECT raw.*, COALESCE(won.label, raw.doc->>'$.labels.run', '{labels.UNLABELLED}') AS label,
                   CASE WHEN won.label IS NOT NULL THEN 'window'
                        WHEN raw.doc->>'$.labels.run' IS NOT NULL THEN 'run' ELSE 'none' END AS label_source
            FROM raw LEFT JOIN won USING (r)""")
        datasets = [r[0] for r in con.execute("SELECT DISTINCT dataset FROM ev ORDER BY dataset NULLS LAST").fetchall()]
        if not datasets:
            raise DatasetError(f"--from-store {data_dir}: its segments hold no events")
        out.mkdir(parents=True, exist_ok=True)
        tables = []
        for ds in datasets:
            name = table_name(ds)
            target = out / f"{name}.parquet"
            where = "dataset IS NULL" if ds is None else f"dataset = {_sql_str(ds)}"
            con.execute(f"COPY (SELECT {_select(columns(ds))} FROM ev WHERE {where} "
                        f"ORDER BY ts, doc->>'$.event.sequence') TO {_sql_str(str(target))} "
                        f"(FORMAT parquet, COMPRESSION zstd)")
            counts = dict(con.execute(f"SELECT label, count(*) FROM ev WHERE {where} GROUP BY 1 ORDER BY 1").fetchall())
            tables.append({"dataset": ds, "path": target.name, "rows": sum(counts.values()), "labels": counts,
                           "sha256": sha256_file(target)})
        hosts = [r[0] for r in con.execute(
            "SELECT DISTINCT doc->>'$.host.name' FROM ev WHERE doc->>'$.host.name' IS NOT NULL ORDER BY 1").fetchall()]
        span = con.execute("SELECT min(doc->>'$.\"@timestamp\"'), max(doc->>'$.\"@timestamp\"') FROM ev").fetchone()
    finally:
        con.close()
    manifest = {
        "format": fmt, "source": "store", "data_dir": str(data_dir), "sensor_version": __version__,
        "schema_version": SCHEMA_VERSION, "exported": rfc3339(time.time_ns()), "hosts": hosts,
        "first_event": span[0], "last_event": span[1], "segments": len(files),
        "runs": labels.runs(data_dir),  # each `sensor run` here: its start, label and config
        "label_windows": [{k: w[k] for k in ("from", "to", "label", "added") if k in w} for w in wins],
        "tables": tables,
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest
