"""The panel's Flask app: pages (overview, alerts, alert, hosts, live), their JSON API, login."""
from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timezone
from urllib.parse import urlencode

import orjson
from flask import Flask, Response, abort, g, redirect, render_template, request

from . import queries, tree
from .auth import COOKIE, HEADERS, SESSION_SECONDS, Auth
from .queries import BadRequest, Filters

LICENSES = {"DRL-1.1": "https://github.com/SigmaHQ/Detection-Rule-License/blob/main/LICENSE.Detection.Rules.md"}
LEVELS = ((99, "critical"), (73, "high"), (47, "medium"), (21, "low"), (0, "informational"))
OPEN_PATHS = ("/static/", "/healthz", "/login")


def create_app(backend, auth: Auth, *, secure_cookie: bool = False, live_interval: float = 1.0) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 << 10  # notes and logins only
    app.jinja_env.filters.update(when=_when, level=_level, size=_size, licence=_licence)
    app.jinja_env.globals.update(urlencode=urlencode)

    def run(sql, params):
        return backend.run(sql, params)

    @app.before_request
    def login_required():
        g.session = None
        if request.path.startswith(OPEN_PATHS):
            return None
        token = request.args.get("token")
        if token is not None:  # /?token=... as Jupyter: log in, then drop the token from the address
            user = auth.check_token(token)
            if user is None:
                return _refuse("the token is not right")
            args = {k: v for k, v in request.args.items() if k != "token"}
            return _logged_in(user, request.path + ("?" + urlencode(args) if args else ""))
        g.session = auth.session(request.cookies.get(COOKIE))
        if g.session is None:
            return _refuse()
        if request.method == "POST" and not auth.csrf_ok(g.session, request.form.get("csrf", "")):
            return Response("CSRF token missing or wrong: reload the page and try again\n", 403,
                            mimetype="text/plain")
        return None

    def _refuse(reason: str = ""):
        if request.path.startswith("/api/") or request.path.endswith((".csv", ".json")):
            return Response(orjson.dumps({"error": reason or "login required"}), 401, mimetype="application/json")
        return render_template("login.html", reason=reason, password=bool(auth.passwords),
                               next=request.full_path if request.method == "GET" else "/"), 401

    def _logged_in(user: str, target: str):
        sid, _ = auth.start(user)
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        resp = redirect(target, 303)
        resp.set_cookie(COOKIE, sid, max_age=SESSION_SECONDS, httponly=True, samesite="Strict",
                        secure=secure_cookie, path="/")
        return resp

    @app.after_request
    def headers(resp):
        for k, v in HEADERS.items():
            if k == "Cache-Control" and request.path.startswith("/static/"):
                continue
            resp.headers.setdefault(k, v)
        return resp

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        if request.path.startswith("/api/") or request.path.endswith((".csv", ".json")):
            return Response(orjson.dumps({"error": str(exc)}), 400, mimetype="application/json")
        return render_template("error.html", message=str(exc)), 400

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    @app.post("/login")
    def login():
        origin = request.headers.get("Origin")
        if origin and origin != request.host_url.rstrip("/"):
            return Response("cross-site login refused\n", 403, mimetype="text/plain")
        form = request.form
        user = auth.check_token(form.get("token", "")) or auth.check_password(form.get("user", ""),
                                                                             form.get("password", ""))
        if user is None:
            time.sleep(0.5)  # slows guessing
            return render_template("login.html", reason="not right: try again", password=bool(auth.passwords),
                                   next=form.get("next", "/")), 401
        return _logged_in(user, form.get("next", "/"))

    @app.post("/logout")
    def logout():
        auth.end(request.cookies.get(COOKIE))
        resp = redirect("/login", 303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/login")
    def login_page():
        return render_template("login.html", reason="", password=bool(auth.passwords), next=request.args.get("next", "/"))

    # -- pages --
    @app.get("/")
    def overview_page():
        f = Filters.parse(request.args)
        return render_template("overview.html", f=f, args=request.args, page="overview", backend=backend.kind)

    @app.get("/alerts")
    def alerts_page():
        f = Filters.parse(request.args)
        total, rows = queries.alert_list(run, backend.dialect, f)
        pages = max(1, -(-total // f.per))
        return render_template("alerts.html", f=f, rows=rows, total=total, pages=pages, page="alerts",
                               args=request.args, sorts=queries.SORTS, states=queries.STATES,
                               severities=list(queries.SEVERITIES))

    @app.get("/alerts.csv")
    def alerts_csv():
        f = Filters.parse(request.args)
        _, rows = queries.alert_list(run, backend.dialect, f, paged=False)
        out = io.StringIO()
        w = csv.writer(out)
        keys = ("id", "ts", "host_id", "host_name", "rule_id", "rule_name", "level", "severity", "techniques",
                "handled", "state", "by_user", "state_at", "note", "pid", "process_name", "command_line")
        w.writerow(keys)
        for r in rows:
            w.writerow([_csv_cell(";".join(r[k]) if k == "techniques" else r[k]) for k in keys])
        return Response(out.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=alerts.csv"})

    @app.get("/alerts.json")
    def alerts_json():
        f = Filters.parse(request.args)
        total, rows = queries.alert_list(run, backend.dialect, f, paged=False)
        return Response(orjson.dumps({"total": total, "alerts": rows}, default=str), mimetype="application/json",
                        headers={"Content-Disposition": "attachment; filename=alerts.json"})

    @app.get("/alerts/<alert_id>")
    def alert_page(alert_id):
        a = queries.alert_row(run, backend.dialect, alert_id)
        if a is None:
            abort(404)
        nodes = backend.process_tree(a)
        return render_template("alert.html", a=a, doc=a["doc"], trigger=backend.trigger(a), page="alerts",
                               tree=tree.ordered(nodes), json=_pretty, states=queries.STATES)

    @app.post("/alerts/<alert_id>/state")
    def alert_state(alert_id):
        state = request.form.get("state", "")
        if state not in queries.STATES:
            raise BadRequest(f"state {state!r}: expected one of {', '.join(queries.STATES)}")
        if queries.alert_row(run, backend.dialect, alert_id) is None:
            abort(404)
        backend.set_state(alert_id, state, request.form.get("note", "")[:2000], g.session.user)
        return redirect(f"/alerts/{alert_id}", 303)

    @app.get("/hosts")
    def hosts_page():
        return render_template("hosts.html", hosts=backend.hosts(), page="hosts")

    @app.get("/live")
    def live_page():
        return render_template("live.html", page="live")

    # -- JSON API --
    @app.get("/api/overview")
    def api_overview():
        f = Filters.parse(request.args)
        return Response(orjson.dumps(queries.overview(run, backend.dialect, f), default=str),
                        mimetype="application/json")

    @app.get("/api/alerts")
    def api_alerts():
        f = Filters.parse(request.args)
        total, rows = queries.alert_list(run, backend.dialect, f)
        return Response(orjson.dumps({"total": total, "page": f.page, "per": f.per, "alerts": rows}, default=str),
                        mimetype="application/json")

    @app.get("/api/hosts")
    def api_hosts():
        return Response(orjson.dumps(backend.hosts(), default=str), mimetype="application/json")

    @app.get("/api/live")
    def api_live():
        """Server-sent events: each new alert as a JSON `alert` message, a comment every 15 s."""
        def stream():
            latest = queries.alerts_after(run, backend.dialect, None)
            cursor = (latest[0]["ts"], latest[0]["id"]) if latest else (datetime(1970, 1, 1, tzinfo=timezone.utc), "")
            yield "retry: 2000\n: connected\n\n"
            quiet = 0.0
            while True:
                time.sleep(live_interval)
                new = queries.alerts_after(run, backend.dialect, cursor)
                for r in new:
                    cursor = (r["ts"], r["id"])
                    yield f"event: alert\ndata: {orjson.dumps(r, default=str).decode()}\n\n"
                quiet = 0.0 if new else quiet + live_interval
                if quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return Response(stream(), mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.context_processor
    def session_values():
        s = g.get("session")
        return {"csrf": s.csrf if s else "", "user": s.user if s else ""}

    return app


def _csv_cell(v):
    """Spreadsheets run a cell that starts with = + - @ as a formula: such text gets a leading '."""
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _pretty(v) -> str:
    return orjson.dumps(v, option=orjson.OPT_INDENT_2, default=str).decode()


def _when(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, str):
        return v.replace("T", " ")[:23] + (" UTC" if v.endswith("Z") else "")
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(v)


def _level(severity) -> str:
    try:
        s = int(severity)
    except (TypeError, ValueError):
        return ""
    return next(name for floor, name in LEVELS if s >= floor)


def _size(n) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


def _licence(name: str) -> str:
    return LICENSES.get(name or "", f"https://spdx.org/licenses/{name}.html" if name else "")
