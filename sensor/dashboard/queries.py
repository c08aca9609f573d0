"""The panel's SQL, one text for DuckDB (local index) and PostgreSQL (fleet): over the logical tables
alerts, responses, blocked, health and alert_states, which each backend provides under those names."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

SEVERITIES = {"informational": (0, 20), "low": (21, 46), "medium": (47, 72), "high": (73, 98), "critical": (99, 1000)}
STATES = ("open", "acknowledged", "resolved")
HANDLED = ("killed", "quarantined", "blocked", "alerted")
SORTS = {"time": "x.ts", "severity": "x.severity", "rule": "x.rule_name", "host": "x.host_name",
         "state": "x.state", "handled": "x.handled"}
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "1y": 365 * 86400}
MAX_PER_PAGE = 500


class BadRequest(ValueError):
    """A filter or range the panel cannot use; its text is shown to the user."""


@dataclass
class Filters:
    """The alerts list's query: filters, order and page, parsed from request arguments."""

    host: str = ""
    rule: str = ""
    severity: str = ""
    technique: str = ""
    state: str = ""
    q: str = ""
    since: datetime | None = None
    until: datetime | None = None
    sort: str = "time"
    desc: bool = True
    page: int = 1
    per: int = 50
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, args) -> "Filters":
        f = cls(host=args.get("host", "").strip(), rule=args.get("rule", "").strip(),
                severity=args.get("severity", "").strip().lower(), technique=args.get("technique", "").strip().upper(),
                state=args.get("state", "").strip().lower(), q=args.get("q", "").strip())
        if f.severity and f.severity not in SEVERITIES:
            raise BadRequest(f"severity {f.severity!r}: expected one of {', '.join(SEVERITIES)}")
        if f.state and f.state not in STATES:
            raise BadRequest(f"state {f.state!r}: expected one of {', '.join(STATES)}")
        if f.technique and not re.fullmatch(r"T\d{4}(\.\d{3})?", f.technique):
            raise BadRequest(f"technique {f.technique!r}: expected an ATT&CK id like T1059 or T1059.004")
        f.since, f.until = time_range(args)
        f.sort = args.get("sort", "time")
        if f.sort not in SORTS:
            raise BadRequest(f"sort {f.sort!r}: expected one of {', '.join(SORTS)}")
        f.desc = args.get("dir", "desc") != "asc"
        f.page = _int(args.get("page", "1"), "page", 1, 1_000_000)
        f.per = _int(args.get("per", "50"), "per", 1, MAX_PER_PAGE)
        return f

    def where(self) -> tuple[str, list]:
        conds, params = [], []
        if self.host:
            conds.append("(x.host_id = %s OR x.host_name = %s)")
            params += [self.host, self.host]
        if self.rule:
            conds.append("(x.rule_id = %s OR x.rule_name = %s)")
            params += [self.rule, self.rule]
        if self.severity:
            lo, hi = SEVERITIES[self.severity]
            conds.append("x.severity BETWEEN %s AND %s")
            params += [lo, hi]
        if self.technique:
            conds.append("CAST(x.doc->'threat' AS TEXT) LIKE %s")
            params.append(f'%"{self.technique}%')
        if self.state:
            conds.append("x.state = %s")
            params.append(self.state)
        if self.q:
            conds.append("concat_ws(' ', x.rule_name, x.doc->'process'->>'command_line', x.doc->'process'->>'executable', "
                         "x.host_id, x.host_name, x.doc->'user'->>'name', x.doc->'file'->>'path', x.id) ILIKE %s ESCAPE '!'")
            params.append("%" + re.sub(r"([!%_])", r"!\1", self.q) + "%")
        if self.since:
            conds.append("x.ts >= %s")
            params.append(self.since)
        if self.until:
            conds.append("x.ts < %s")
            params.append(self.until)
        return (" AND ".join(conds) or "TRUE"), params

    def args(self, **change) -> dict:
        """These filters as URL arguments (for links that keep them), with some changed."""
        out = {"host": self.host, "rule": self.rule, "severity": self.severity, "technique": self.technique,
               "state": self.state, "q": self.q, "sort": self.sort, "dir": "desc" if self.desc else "asc",
               "page": self.page, "per": self.per, **self.extra}
        out.update(change)
        return {k: v for k, v in out.items() if v not in ("", None)}


def _int(value: str, name: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name} {value!r}: expected a whole number") from None
    if not lo <= n <= hi:
        raise BadRequest(f"{name} {n}: expected {lo} to {hi}")
    return n


def time_range(args) -> tuple[datetime | None, datetime | None]:
    """range=1h|6h|24h|7d|30d|1y|all, or from=/to= (ISO 8601, local inputs read as UTC)."""
    start, end = args.get("from", "").strip(), args.get("to", "").strip()
    if start or end:
        return _when(start, "from"), _when(end, "to")
    r = args.get("range", "all")
    if r == "all":
        return None, None
    if r not in RANGES:
        raise BadRequest(f"range {r!r}: expected one of {', '.join(RANGES)}, all, or from=/to=")
    return datetime.fromtimestamp(time.time() - RANGES[r], timezone.utc), None


def _when(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} {value!r}: expected a time like 2026-11-24T10:00") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# Each alert with how it was handled and its state; a successful quarantine counts over a kill
# (quarantine stops the process too), a dry run or a skipped response is not handling.
ALERT_ROWS = """
  r AS (SELECT alert_id,
               max(CASE WHEN result = 'success' AND NOT coalesce(dry_run, FALSE) AND action IN ('kill', 'kill-tree')
                        THEN 1 ELSE 0 END) AS killed,
               max(CASE WHEN result = 'success' AND NOT coalesce(dry_run, FALSE) AND action = 'quarantine'
                        THEN 1 ELSE 0 END) AS quarantined
        FROM responses GROUP BY alert_id),
  x AS (SELECT a.id, a.ts, a.host_id, a.doc->'host'->>'name' AS host_name, a.rule_id, a.rule_name, a.severity,
               a.process_entity, a.doc,
               CASE WHEN r.quarantined = 1 THEN 'quarantined' WHEN r.killed = 1 THEN 'killed' ELSE 'alerted' END AS handled,
               coalesce(s.state, 'open') AS state, s.by_user, s.state_at, s.note
        FROM alerts a LEFT JOIN r ON r.alert_id = a.id LEFT JOIN alert_states s ON s.alert_id = a.id)
"""


@dataclass
class Dialect:
    """What differs between the two engines: placeholders, the source tables, JSON array unnesting."""

    name: str
    prelude: str = ""  # CTEs that define the logical tables (PostgreSQL: views over `events`)
    technique_ids: str = ""  # a set-returning expression of one alert's technique ids, over x.doc

    def sql(self, body: str, *ctes: str) -> str:
        parts = [p.strip().rstrip(",") for p in (self.prelude, *ctes) if p.strip()]
        text = ("WITH " + ",\n".join(parts) + "\n" if parts else "") + body
        return text.replace("%s", "?") if self.name == "duckdb" else text


DUCKDB = Dialect("duckdb", technique_ids="unnest(json_extract_string(x.doc, '$.threat.technique[*].id'))")


def bucket_seconds(since: datetime | None, until: datetime | None, first: datetime | None) -> int:
    """A bar width that gives at most ~60 bars over the range."""
    end = (until or datetime.now(timezone.utc)).timestamp()
    start = (since or first or datetime.now(timezone.utc)).timestamp()
    span = max(end - start, 60)
    for step in (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400):
        if span / step <= 60:
            return step
    return 365 * 86400


def overview(run, d: Dialect, f: Filters) -> dict:
    """Everything the overview shows, for the filters' time range; `run(sql, params)` -> rows."""
    where, params = f.where()
    bw = Filters(since=f.since, until=f.until)
    bwhere, bparams = bw.where()
    bwhere = bwhere.replace("x.", "b.")
    first = run(d.sql(f"SELECT min(x.ts) FROM x WHERE {where}", ALERT_ROWS), params)[0][0]
    step = bucket_seconds(f.since, f.until, first)
    series: dict[int, dict] = {}
    rows = run(d.sql(f"SELECT floor(extract(epoch FROM x.ts) / {step}) * {step} AS t, x.handled, count(*) "
                     f"FROM x WHERE {where} GROUP BY 1, 2", ALERT_ROWS), params)
    rows += run(d.sql(f"SELECT floor(extract(epoch FROM b.ts) / {step}) * {step} AS t, 'blocked', count(*) "
                      f"FROM blocked b WHERE {bwhere} GROUP BY 1"), bparams)
    for t, handled, n in rows:
        series.setdefault(int(t), dict.fromkeys(HANDLED, 0))[handled] += n

    def counts(expr: str, limit: int = 15) -> list:
        return [list(r) for r in run(d.sql(f"SELECT {expr} AS k, count(*) AS n FROM x WHERE {where} "
                                           f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {limit}", ALERT_ROWS), params)]

    techniques = run(d.sql(f"SELECT t, count(*) FROM (SELECT {d.technique_ids} AS t FROM x WHERE {where}) AS u "
                           f"WHERE t IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 15", ALERT_ROWS), params)
    severity = counts("CASE WHEN x.severity >= 99 THEN 'critical' WHEN x.severity >= 73 THEN 'high' "
                      "WHEN x.severity >= 47 THEN 'medium' WHEN x.severity >= 21 THEN 'low' ELSE 'informational' END")
    handled = dict(run(d.sql(f"SELECT x.handled, count(*) FROM x WHERE {where} GROUP BY 1", ALERT_ROWS), params))
    handled["blocked"] = run(d.sql(f"SELECT count(*) FROM blocked b WHERE {bwhere}"), bparams)[0][0]
    return {
        "step": step,
        "series": [{"t": t, **series[t]} for t in sorted(series)],
        "totals": {k: handled.get(k, 0) for k in HANDLED},
        "alerts": sum(n for k, n in handled.items() if k != "blocked"),
        "by_rule": counts("x.rule_name"),
        "by_technique": [list(r) for r in techniques],
        "by_severity": severity,
        "by_host": counts("coalesce(x.host_name, x.host_id)"),
        "by_state": dict(run(d.sql(f"SELECT x.state, count(*) FROM x WHERE {where} GROUP BY 1", ALERT_ROWS), params)),
        "health": health_series(run, d, bwhere.replace("b.", "h."), bparams, step),
    }


def health_series(run, d: Dialect, where: str, params: list, step: int) -> list:
    """Per host and bar: the latest CPU, RSS, queue and lost events the sensor reported."""
    rows = run(d.sql(f"SELECT h.host_id, floor(extract(epoch FROM h.ts) / {step}) * {step} AS t, h.ts, "
                     f"CAST(h.doc->'sensor'->'health' AS TEXT) FROM health h WHERE {where} ORDER BY h.ts"), params)
    import orjson

    from ..fleet.collect import health_summary

    latest: dict[tuple, tuple] = {}
    for host, t, ts, health in rows:
        latest[(host, int(t))] = (ts, health)  # ordered by time: the last one stays
    out = []
    for (host, t), (ts, health) in sorted(latest.items()):
        h = orjson.loads(health) if health else {}
        s = health_summary(h)
        queue = sum((src.get("queue_bytes") or 0) for src in (h.get("sources") or {}).values())
        out.append({"host": host, "t": t, "lost": s["lost"], "queue_bytes": queue, "queue_events": s["queue"],
                    "cpu_percent": s["cpu_percent"], "rss_bytes": s["rss_bytes"]})
    return out


LIST_COLUMNS = ("x.id, x.ts, x.host_id, x.host_name, x.rule_id, x.rule_name, x.severity, x.handled, x.state, x.by_user, "
                "x.state_at, x.note, x.doc->'process'->>'pid', x.doc->'process'->>'name', "
                "substr(x.doc->'process'->>'command_line', 1, 300), CAST(x.doc->'threat' AS TEXT), x.doc->'rule'->>'level'")
LIST_KEYS = ("id", "ts", "host_id", "host_name", "rule_id", "rule_name", "severity", "handled", "state", "by_user",
             "state_at", "note", "pid", "process_name", "command_line", "threat", "level")


def alert_list(run, d: Dialect, f: Filters, *, paged: bool = True) -> tuple[int, list[dict]]:
    """The filtered, sorted alerts: (total, this page's rows)."""
    where, params = f.where()
    total = run(d.sql(f"SELECT count(*) FROM x WHERE {where}", ALERT_ROWS), params)[0][0]
    order = f"{SORTS[f.sort]} {'DESC' if f.desc else 'ASC'} NULLS LAST, x.ts DESC, x.id"
    limit = f" LIMIT {f.per} OFFSET {(f.page - 1) * f.per}" if paged else " LIMIT 100000"
    rows = run(d.sql(f"SELECT {LIST_COLUMNS} FROM x WHERE {where} ORDER BY {order}{limit}", ALERT_ROWS), params)
    return total, [_row(r) for r in rows]


def _row(r) -> dict:
    import orjson

    out = dict(zip(LIST_KEYS, r))
    threat = orjson.loads(out.pop("threat")) if out.get("threat") else {}
    out["techniques"] = [t.get("id") for t in threat.get("technique", []) if t.get("id")]
    out["pid"] = int(out["pid"]) if out["pid"] not in (None, "") else None
    return out


def alerts_after(run, d: Dialect, after: tuple | None, limit: int = 100) -> list[dict]:
    """Alerts newer than the (ts, id) cursor, oldest first: the live feed."""
    if after is None:
        rows = run(d.sql(f"SELECT {LIST_COLUMNS} FROM x ORDER BY x.ts DESC, x.id DESC LIMIT 1", ALERT_ROWS), [])
    else:
        rows = run(d.sql(f"SELECT {LIST_COLUMNS} FROM x WHERE x.ts > %s OR (x.ts = %s AND x.id > %s) "
                         f"ORDER BY x.ts, x.id LIMIT {limit}", ALERT_ROWS), [after[0], after[0], after[1]])
    return [_row(r) for r in rows]


def alert_row(run, d: Dialect, alert_id: str) -> dict | None:
    rows = run(d.sql(f"SELECT {LIST_COLUMNS}, CAST(x.doc AS TEXT) FROM x WHERE x.id = %s", ALERT_ROWS), [alert_id])
    if not rows:
        return None
    import orjson

    out = _row(rows[0][:-1])
    out["doc"] = orjson.loads(rows[0][-1])
    resp = run(d.sql("SELECT ts, action, result, dry_run, CAST(doc AS TEXT) FROM responses WHERE alert_id = %s "
                     "ORDER BY ts"), [alert_id])
    out["responses"] = [{"ts": ts, "action": a, "result": res, "dry_run": dry, "doc": orjson.loads(doc)}
                        for ts, a, res, dry, doc in resp]
    return out


def host_row(host_id: str, name, os_: str, version, first, last, health_at, health: dict) -> dict:
    """A hosts-page row: identity, when seen, and what its latest sensor.health says."""
    from ..fleet.collect import health_summary

    sources = health.get("sources") or {}
    s = health_summary(health)
    return {"id": host_id, "name": name or host_id, "os": os_, "version": version or "", "first_seen": first,
            "last_seen": last, "health_at": health_at, "sources": sorted(sources),
            "enforcement": (sources.get("process") or {}).get("enforcement") or "",
            "lost": s["lost"], "queue": s["queue"], "cpu_percent": s["cpu_percent"], "rss_bytes": s["rss_bytes"]}
