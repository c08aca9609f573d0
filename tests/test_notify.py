"""Notifiers against real local servers: an HTTP server (webhook and a Telegram-compatible API)
and an SMTP server (aiosmtpd)."""
from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from sensor.notify import Notifier, load
from conftest import wait_for


class Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        srv.requests.append((self.path, dict(self.headers), body))
        status = srv.statuses.pop(0) if srv.statuses else 200
        if srv.delay:
            time.sleep(srv.delay)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args):
        pass


@pytest.fixture
def http():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.requests, srv.statuses, srv.delay = [], [], 0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope)
            return "250 OK"

    import socket

    with socket.socket() as s:  # a free port: the controller's readiness check cannot use port 0
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Handler()
    c = Controller(handler, hostname="127.0.0.1", port=port)
    c.start()
    yield c, handler
    c.stop()


def an_alert(n=1, level="high"):
    return {"event": {"kind": "alert", "id": f"a{n}"}, "host": {"name": "box"},
            "rule": {"id": f"rule-{n}", "name": f"Rule {n}", "author": "Jane Doe", "level": level},
            "process": {"pid": 100 + n, "entity_id": f"ent{n}", "command_line": "nc -e /bin/sh"}}


def config(tmp_path, notifiers, **extra):
    p = tmp_path / "notify.yaml"
    p.write_text(yaml.safe_dump({"notifiers": notifiers, **extra}))
    return load(p)


def test_webhook_signed_and_telegram(http, tmp_path):
    base = f"http://127.0.0.1:{http.server_port}"
    n = config(tmp_path, [{"type": "webhook", "url": f"{base}/hook", "secret": "s3cret"},
                          {"type": "telegram", "token": "123:ABC", "chat_id": "42", "api_base": base}]).start()
    n.submit(an_alert())
    n.close()
    (hook,) = [r for r in http.requests if r[0] == "/hook"]
    body = json.loads(hook[2])
    assert body["rule"]["author"] == "Jane Doe" and body["rule"]["id"] == "rule-1"
    expect = "sha256=" + hmac.new(b"s3cret", hook[2], hashlib.sha256).hexdigest()
    assert hook[1]["X-Sensor-Signature"] == expect
    (tg,) = [r for r in http.requests if r[0] == "/bot123:ABC/sendMessage"]
    msg = json.loads(tg[2])
    assert msg["chat_id"] == "42" and "Rule 1" in msg["text"] and "Jane Doe" in msg["text"]
    assert n.stats["sent"] == 2


def test_email(smtp, tmp_path):
    c, handler = smtp
    n = config(tmp_path, [{"type": "email", "host": "127.0.0.1", "port": c.port, "to": ["soc@example.org"],
                           "from": "sensor@box"}]).start()
    n.submit(an_alert())
    n.close()
    (env,) = handler.messages
    msg = message_from_bytes(env.content)
    assert env.rcpt_tos == ["soc@example.org"] and msg["Subject"] == "[sensor] Rule 1"
    assert "Jane Doe" in msg.get_payload()


def test_retry_dedup_rate_limit_routing_and_never_blocking(http, tmp_path):
    base = f"http://127.0.0.1:{http.server_port}"
    http.statuses = [500, 503]  # the first two attempts fail
    n = config(tmp_path, [{"type": "webhook", "url": f"{base}/all", "per_minute": 3},
                          {"type": "webhook", "url": f"{base}/critical", "match": {"rule.level": "critical"}}],
               backoff=0.05, retries=3).start()
    n.submit(an_alert(1))
    wait_for(lambda: n.stats["sent"] == 1, what="delivery after retries")
    assert len([r for r in http.requests if r[0] == "/all"]) == 3 and n.stats["retries"] == 2
    n.submit(an_alert(1))  # same rule, same process: a duplicate
    for i in range(2, 7):
        n.submit(an_alert(i, level="critical" if i == 2 else "high"))
    n.close()
    assert n.stats["deduplicated"] == 1
    assert len([r for r in http.requests if r[0] == "/all"]) == 3 + 2  # 3 per minute in all
    assert n.stats["rate_limited"] == 3
    assert [json.loads(r[2])["rule"]["id"] for r in http.requests if r[0] == "/critical"] == ["rule-2"]

    http.delay = 3  # a receiver that hangs must not hold up the pipeline
    slow = config(tmp_path, [{"type": "webhook", "url": f"{base}/slow"}]).start()
    t0 = time.monotonic()
    for i in range(50):
        slow.submit(an_alert(100 + i))
    assert time.monotonic() - t0 < 1.0  # one held delivery alone would take the receiver's 3 s
    slow.close(timeout=0.5)


def test_sensor_sends_alerts_to_a_webhook(start_sensor, http, tmp_path):
    notify = tmp_path / "notify.yaml"
    notify.write_text(yaml.safe_dump({"notifiers": [{"type": "webhook",
                                                     "url": f"http://127.0.0.1:{http.server_port}/hook"}]}))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yml").write_text(yaml.safe_dump({
        "title": "notify marker", "id": "55555555-5555-4555-8555-555555555555", "status": "test",
        "author": "tester", "level": "high", "logsource": {"category": "process_creation", "product": "linux"},
        "detection": {"sel": {"CommandLine|contains": "notify-me-91c0"}, "condition": "sel"}}))
    s = start_sensor("--rules", str(rules), "--notifiers", str(notify))
    subprocess.run(["/bin/echo", "notify-me-91c0"], stdout=subprocess.DEVNULL)
    wait_for(lambda: http.requests, what="the webhook call")
    s.stop()
    bodies = [json.loads(r[2]) for r in http.requests]
    (body,) = [b for b in bodies if b["rule"]["name"] == "notify marker"]
    assert body["process"]["args"] == ["/bin/echo", "notify-me-91c0"]
    # every alert goes out, the tamper alerts of the stop signal (SIGCONT, SIGTERM) too
    assert {b["rule"]["id"] for b in bodies} <= {"55555555-5555-4555-8555-555555555555", "sensor-tamper-signal"}
    assert s.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["notify"]["sent"] == len(bodies)


def test_bad_notifier_config(tmp_path):
    from sensor.errors import ConfigError

    p = tmp_path / "n.yaml"
    p.write_text(yaml.safe_dump({"notifiers": [{"type": "pager"}]}))
    with pytest.raises(ConfigError, match="type must be one of"):
        load(p)
    p.write_text(yaml.safe_dump({"notifiers": [{"type": "telegram", "token": "x"}]}))
    with pytest.raises(ConfigError, match="missing chat_id"):
        load(p)
    Notifier([]).close()
