"""The local store as SQL: a DuckDB `events` view over the zstd JSON lines segments, and `sensor query`."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import SensorError
from .store import _stem, segments


class QueryError(SensorError):
    """DuckDB refused the SQL, or the store cannot be read."""


# (column, JSON path, DuckDB type): the schema's columns an analyst asks for most (docs/schema.md);
# every other field is in `doc` (JSON): doc->>'$.process.parent.name'.
COLUMNS: list[tuple[str, str, str]] = [
    ("@timestamp", '$."@timestamp"', "TIMESTAMPTZ"),
    ("event.id", "$.event.id", "VARCHAR"),
    ("event.sequence", "$.event.sequence", "UBIGINT"),
    ("event.kind", "$.event.kind", "VARCHAR"),
    ("event.dataset", "$.event.dataset", "VARCHAR"),
    ("event.module", "$.event.module", "VARCHAR"),
    ("event.category", "$.event.category", "VARCHAR[]"),
    ("event.type", "$.event.type", "VARCHAR[]"),
    ("event.action", "$.event.action", "VARCHAR"),
    ("event.outcome", "$.event.outcome", "VARCHAR"),
    ("event.reason", "$.event.reason", "VARCHAR"),
    ("event.severity", "$.event.severity", "INTEGER"),
    ("host.id", "$.host.id", "VARCHAR"),
    ("host.name", "$.host.name", "VARCHAR"),
    ("process.pid", "$.process.pid", "BIGINT"),
    ("process.entity_id", "$.process.entity_id", "VARCHAR"),
    ("process.start", "$.process.start", "VARCHAR"),
    ("process.name", "$.process.name", "VARCHAR"),
    ("process.executable", "$.process.executable", "VARCHAR"),
    ("process.args", "$.process.args", "VARCHAR[]"),
    ("process.command_line", "$.process.command_line", "VARCHAR"),
    ("process.working_directory", "$.process.working_directory", "VARCHAR"),
    ("process.exit_code", "$.process.exit_code", "BIGINT"),
    ("process.parent.pid", "$.process.parent.pid", "BIGINT"),
    ("process.parent.entity_id", "$.process.parent.entity_id", "VARCHAR"),
    ("process.parent.executable", "$.process.parent.executable", "VARCHAR"),
    ("user.id", "$.user.id", "VARCHAR"),
    ("user.name", "$.user.name", "VARCHAR"),
    ("file.path", "$.file.path", "VARCHAR"),
    ("file.target_path", "$.file.target_path", "VARCHAR"),
    ("source.ip", "$.source.ip", "VARCHAR"),
    ("source.port", "$.source.port", "INTEGER"),
    ("destination.ip", "$.destination.ip", "VARCHAR"),
    ("destination.port", "$.destination.port", "INTEGER"),
    ("network.transport", "$.network.transport", "VARCHAR"),
    ("network.direction", "$.network.direction", "VARCHAR"),
    ("dns.question.name", "$.dns.question.name", "VARCHAR"),
    ("rule.id", "$.rule.id", "VARCHAR"),
    ("rule.name", "$.rule.name", "VARCHAR"),
    ("rule.level", "$.rule.level", "VARCHAR"),
]


def segment_files(data_dir) -> list[str]:
    """One file per segment: a stem caught mid-compression has both, and its .zst is whole."""
    out: dict[str, Path] = {}
    for p in segments(data_dir):
        out.setdefault(_stem(p.name), p)  # segments() puts the .zst of a stem first
    return [str(p) for p in out.values()]


def _sql_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def column_sql(source: str = "json") -> str:
    """The SELECT list that turns one event's JSON into the view's columns."""
    cols = []
    for name, path, typ in COLUMNS:
        raw = f"{source}->'{path}'" if typ.endswith("[]") else f"{source}->>'{path}'"
        cols.append(f'TRY_CAST({raw} AS {typ}) AS "{name}"')
    return ", ".join(cols) + f", {source} AS doc"


def objects_sql(files: list[str]) -> str:
    """Every whole event line of `files` as a JSON value `json` (a torn last line is skipped)."""
    if not files:  # no segment yet: an empty relation of the same shape
        return "(SELECT NULL::JSON AS json WHERE false)"
    return (f"(SELECT json FROM read_json_objects({_sql_list(files)}, format='newline_delimited', "
            f"ignore_errors=true) WHERE json IS NOT NULL)")


def connect(data_dir, *, threads: int | None = None):
    """An in-memory DuckDB whose `events` view reads DATA_DIR/events as it is now."""
    import duckdb

    con = duckdb.connect(":memory:", config={"threads": threads} if threads else {})
    define_events(con, data_dir)
    return con


def define_events(con, data_dir) -> None:
    """(Re)defines the `events` view over the segments present now."""
    con.execute(f"CREATE OR REPLACE VIEW events AS SELECT {column_sql()} FROM {objects_sql(segment_files(data_dir))}")


def run_query(data_dir, sql: str, *, retries: int = 3):
    """Runs SQL against the view; a segment compressed or pruned mid-query is read again."""
    import duckdb

    for attempt in range(retries):
        con = connect(data_dir)
        try:
            rel = con.sql(sql)
            if rel is None:
                return con, None, []
            return con, rel.columns, rel.fetchall()
        except duckdb.IOException as exc:
            con.close()
            if attempt == retries - 1:
                raise QueryError(f"query: {_first_line(exc)}") from None
        except duckdb.Error as exc:
            con.close()
            raise QueryError(f"query: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def cmd_query(args) -> int:
    """`sensor query "SQL"`: prints the result as a table, CSV or JSON lines."""
    import csv

    import orjson

    if not Path(args.data_dir, "events").is_dir():
        raise QueryError(f"no events under {args.data_dir}", hint="see --data-dir")
    con, columns, rows = run_query(args.data_dir, args.sql)
    try:
        if columns is None:
            return 0
        out = sys.stdout
        if args.format == "json":
            for row in rows:
                out.write(orjson.dumps(dict(zip(columns, row)), default=str).decode() + "\n")
        elif args.format == "csv":
            w = csv.writer(out)
            w.writerow(columns)
            w.writerows(rows)
        else:
            _table(out, columns, rows)
        return 0
    finally:
        con.close()


def _table(out, columns, rows, width: int = 60):
    """Plain aligned columns (cells cut at `width`), one header line."""
    def cell(v):
        s = "NULL" if v is None else str(v).replace("\n", "\\n")
        return s if len(s) <= width else s[:width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    print(f"({len(rows):,} rows)", file=sys.stderr)


def add_arguments(p, default_data_dir: str):
    p.add_argument("sql", metavar="SQL", help='e.g. SELECT "process.name", count(*) FROM events GROUP BY 1')
    p.add_argument("--data-dir", default=default_data_dir)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default), csv, or json (one object per row)")
