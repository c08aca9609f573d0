"""The web panel in a real browser over a real sensor's store: a script dropped in /tmp raises an
alert and is killed by policy; the overview, list, filters, detail with its process tree and
response, acknowledge, live updates, login and escaping are checked in headless chromium."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import Sensor, wait_for
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from dashboardfixtures import Panel, chrome, console_errors  # noqa: F401  (fixture)
from fleetservers import postgres  # noqa: F401  (fixture)

RULE_ID = "5f0c7d4e-3b1a-4c2d-9e8f-0a1b2c3d4e5f"
XSS = ("<script>window.__pwned = 1</script>", '"><img src=x onerror="window.__pwned = 2">')
SHOTS = os.environ.get("PANEL_SCREENSHOTS")  # a directory: save a PNG of each page there (docs/img)


def drop_script(directory: Path, marker: str, port: int, run: int) -> Path:
    """The 'attack': a child that connects out and exits 3, then a file whose name the rule
    watches; the shell then becomes a sleep the kill policy must end."""
    script = directory / f"dropper-{marker}.sh"
    script.write_text(f"""#!/bin/sh
python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", {port})).close(); sys.exit(3)'
: > "{directory}/{marker}-{run}.drop"  # created, never written: one file event, one alert
exec sleep 30
""")
    script.chmod(0o755)
    return script


class Scene:
    """A sensor with the rule and kill policy, the script run once, and a panel over the store."""

    def __init__(self, tmp: Path):
        self.tmp, self.marker = tmp, f"drop{uuid.uuid4().hex[:10]}"
        rules = tmp / "rules"
        rules.mkdir()
        (rules / "dropper.yml").write_text(yaml.safe_dump({
            "title": "Dropper Writes Its Payload", "id": RULE_ID, "status": "test", "level": "high",
            "author": "panel tester", "description": "A script wrote the payload file the test plants.",
            "references": ["https://attack.mitre.org/techniques/T1059/004/"],
            "tags": ["attack.execution", "attack.t1059.004"],
            "logsource": {"category": "file_event", "product": "linux"},
            "detection": {"sel": {"TargetFilename|endswith": ".drop", "TargetFilename|contains": self.marker[:14]},
                          "condition": "sel"}}))
        policy = tmp / "policy.yaml"
        self.blocked_tool = tmp / "blocked-tool"
        shutil.copy("/usr/bin/true", self.blocked_tool)  # stopped in the kernel at its exec: "blocked"
        policy.write_text(yaml.safe_dump([{"match": {"rule.id": RULE_ID}, "action": "kill"},
                                          {"action": "block-exec", "executables": [str(self.blocked_tool)]}]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        self.sensor = Sensor(tmp / "data", "--health-interval", "1", "--rules", str(rules),
                             "--response-policy", str(policy))
        self.procs: list[subprocess.Popen] = []
        self.panel = None

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
                conn.close()
            except OSError:
                return

    def attack(self, *args: str) -> subprocess.Popen:
        """Runs the dropper with these arguments; returns once the kill policy ended it."""
        script = drop_script(self.tmp, self.marker, self.port, len(self.procs))
        p = subprocess.Popen([str(script), self.marker, *args], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        p.wait(20)
        return p

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # anything the kill left behind (it should leave nothing)
            except ProcessLookupError:
                pass
        if self.panel:
            self.panel.stop()
        self.sensor.kill()
        self.listener.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = Scene(tmp_path_factory.mktemp("panel"))
    try:
        big = ["A" * (64 << 10)] * 16  # 1 MiB of argv (the kernel source keeps the first 8 KiB)
        s.first = s.attack(*XSS, *big)
        assert subprocess.run([str(s.blocked_tool)]).returncode == -9
        wait_for(lambda: [e for e in s.sensor.events(event__dataset="response")], 20, 0.1, "the kill response")
        s.panel = Panel(s.tmp / "panel.log", "--data-dir", str(s.sensor.data_dir))
        yield s
    finally:
        s.close()
        shutil.rmtree(s.tmp, ignore_errors=True)


def login(driver, panel):
    driver.get(f"{panel.base}/?token={panel.token}")
    wait_for(lambda: driver.get_cookie("sensor_panel"), 10, 0.05, "the session cookie")


def open_page(driver, panel, path: str, ready: str):
    """Logs in, opens path, and waits until its script sets <body data-READY="1">."""
    login(driver, panel)
    driver.get(panel.base + path)
    wait_for(lambda: driver.find_element("tag name", "body").get_attribute(f"data-{ready}") == "1", 20, 0.1,
             f"{path} to be {ready}")


def shot(driver, name):
    if SHOTS:
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def test_without_the_token_nothing_is_shown(scene, chrome):
    panel = scene.panel
    for path in ("/", "/alerts", "/hosts", "/api/alerts", "/api/overview", "/alerts.csv", "/api/live"):
        status, body = panel.get(path)
        assert status == 401, path
        assert scene.marker.encode() not in body and b"Dropper" not in body, path
    chrome.delete_all_cookies()
    chrome.get(f"{panel.base}/alerts")
    assert chrome.find_elements("css selector", "form[action='/login']")
    assert not chrome.find_elements("css selector", "tr.alert")
    chrome.get(f"{panel.base}/?token=wrong-token")
    assert "not right" in chrome.find_element("id", "login-error").text
    assert chrome.get_cookie("sensor_panel") is None
    shot(chrome, "login")


def test_overview_counts_the_killed_threat(scene, chrome):
    open_page(chrome, scene.panel, "/?range=24h", "loaded")
    counts = {k: chrome.find_element("id", f"n-{k}").text for k in ("alerts", "killed", "blocked", "alerted", "open")}
    assert counts == {"alerts": "1", "killed": "1", "blocked": "1", "alerted": "0", "open": "1"}
    assert len(chrome.find_elements("css selector", "#health tr.health-row")) == 1
    assert int(chrome.find_elements("css selector", "#health tr.health-row td")[2].text) >= 0
    shot(chrome, "overview")
    assert not [m for m in console_errors(chrome) if "Content Security Policy" in m]


def test_list_filters_and_export(scene, chrome):
    login(chrome, scene.panel)
    base = scene.panel.base
    chrome.get(f"{base}/alerts")
    rows = chrome.find_elements("css selector", "tr.alert")
    assert len(rows) == 1 and "Dropper Writes Its Payload" in rows[0].text and "killed" in rows[0].text
    shot(chrome, "alerts")
    for query, want in (("severity=high", 1), ("severity=low", 0), ("technique=T1059", 1), ("technique=T1003", 0),
                        (f"q={scene.marker}", 1), ("q=nothing-like-it", 0), ("state=open", 1),
                        ("state=resolved", 0), (f"rule={RULE_ID}", 1), ("host=no-such-host", 0),
                        ("range=1h", 1), ("from=2099-01-01T00:00", 0), ("to=2000-01-01T00:00", 0)):
        chrome.get(f"{base}/alerts?{query}")
        assert len(chrome.find_elements("css selector", "tr.alert")) == want, query
    chrome.get(f"{base}/alerts?severity=extreme")
    assert "severity 'extreme'" in chrome.find_element("id", "error").text
    cookie = f"sensor_panel={chrome.get_cookie('sensor_panel')['value']}"
    status, body = scene.panel.get(f"/alerts.json?q={scene.marker}", cookie)
    (alert,) = json.loads(body)["alerts"]
    assert status == 200 and alert["rule_id"] == RULE_ID and alert["handled"] == "killed"
    status, body = scene.panel.get("/alerts.csv?severity=high", cookie)
    lines = body.decode().splitlines()
    assert lines[0].startswith("id,ts,host_id") and len(lines) == 2 and alert["id"] in lines[1]


def test_detail_tree_response_and_escaping(scene, chrome):
    login(chrome, scene.panel)
    chrome.get(f"{scene.panel.base}/alerts")
    chrome.find_element("css selector", "tr.alert a").click()
    assert chrome.find_element("id", "rule-name").text == "Dropper Writes Its Payload"
    assert chrome.find_element("id", "rule-author").text == "panel tester"
    assert "Detection-Rule-License" in chrome.find_element("id", "rule-license").get_attribute("href")
    response = chrome.find_element("css selector", "#responses tr.response").text
    assert "kill" in response and "success" in response and f"killed {scene.first.pid}" in response
    # the tree: the alert's process (killed: 137), its child that connected out and exited 3, and the
    # payload file the shell wrote; the test's own python is among the ancestors
    alert_node = chrome.find_element("css selector", "#tree li.alert")
    assert "exit 137" in alert_node.text and f"pid {scene.first.pid}" in alert_node.text
    assert chrome.find_elements("css selector", "#tree li.ancestor")
    child = [n for n in chrome.find_elements("css selector", "#tree li.descendant") if "python3" in n.text]
    assert child and "exit 3" in child[0].text
    conns = child[0].find_element("css selector", "details.conns")
    conns.click()
    assert f"127.0.0.1:{scene.port}" in conns.text
    files = alert_node.find_element("css selector", "details.files")
    files.click()
    assert f"{scene.marker}-0.drop" in files.text
    # hostile argv: shown as text, never run or parsed as markup
    cmdline = chrome.find_element("id", "alert-cmdline").text
    assert XSS[0] in cmdline and XSS[1] in cmdline and "AAAA" in cmdline
    assert chrome.execute_script("return window.__pwned === undefined")
    assert not chrome.find_elements("css selector", "img")
    assert "21 arguments" in chrome.find_element("id", "truncated").text  # the 1 MiB argv was cut
    shot(chrome, "alert")
    assert not [m for m in console_errors(chrome) if "Content Security Policy" in m or "pwned" in m]


def state_text(chrome) -> str:
    """The alert's state line, or "" while the page that the state form posted to is loading
    (seen in CI: the element looked up mid-navigation)."""
    try:
        return chrome.find_element("id", "state").text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_acknowledge_with_a_note_is_kept(scene, chrome):
    login(chrome, scene.panel)
    chrome.get(f"{scene.panel.base}/alerts")
    chrome.find_element("css selector", "tr.alert a").click()
    alert_url = chrome.current_url
    chrome.find_element("css selector", "#state-form textarea").send_keys("seen: test dropper <b>x</b>")
    chrome.find_element("id", "ack").click()
    wait_for(lambda: state_text(chrome).startswith("acknowledged"), 10, 0.1, "the new state")
    assert chrome.find_element("id", "state-by").text and chrome.find_element("id", "state-note").text == \
        "seen: test dropper <b>x</b>"
    chrome.get(f"{scene.panel.base}/alerts?state=acknowledged")
    (row,) = chrome.find_elements("css selector", "tr.alert")
    assert "acknowledged" in row.text and "by " in row.text
    lines = (scene.sensor.data_dir / "panel" / "states.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["state"] == "acknowledged"
    # a state change without the page's CSRF token is refused
    cookie = f"sensor_panel={chrome.get_cookie('sensor_panel')['value']}"
    status, _ = scene.panel.get(alert_url.split(str(scene.panel.port))[1] + "/state", cookie, b"state=resolved")
    assert status == 403
    chrome.get(alert_url)
    assert chrome.find_element("id", "state").text.startswith("acknowledged")


def test_hosts_page(scene, chrome):
    login(chrome, scene.panel)
    chrome.get(f"{scene.panel.base}/hosts")
    (row,) = chrome.find_elements("css selector", "tr.host")
    assert row.get_attribute("data-id") == open("/etc/machine-id").read().strip()
    assert "process" in row.find_element("css selector", ".sources").text
    assert row.find_element("css selector", ".enforcement").text in ("send_signal", "lsm")
    assert row.find_element("css selector", ".lost").text.isdigit()
    shot(chrome, "hosts")


def test_live_page_shows_a_new_alert_without_reload(scene, chrome):
    open_page(chrome, scene.panel, "/live", "live")
    chrome.execute_script("window.__same_page = true")
    second = scene.attack("second-run")
    assert second.returncode == -9
    wait_for(lambda: chrome.find_elements("css selector", "#live tr.alert"), 30, 0.2, "the new alert")
    row = chrome.find_element("css selector", "#live tr.alert")
    assert "Dropper Writes Its Payload" in row.text and "second-run" in row.text
    assert chrome.execute_script("return window.__same_page === true")  # no reload happened
    shot(chrome, "live")


def test_same_pages_over_the_fleets_postgres(scene, chrome, postgres):
    """The store's events stored by the collector's own writer into a real PostgreSQL: the panel
    with --postgres shows the same alert, response, tree and host, and keeps states there."""
    import orjson

    from fleetservers import query
    from sensor.fleet.collect import Writer, decode
    from sensor.store import read_events

    name = f"p_{uuid.uuid4().hex[:10]}"
    postgres.query(f"CREATE DATABASE {name}")
    dsn = postgres.dsn.rsplit("/", 1)[0] + f"/{name}"
    writer = Writer(dsn)
    rows, docs = [], []
    for ev in read_events(scene.sensor.data_dir):
        row, doc = decode(orjson.dumps(ev))
        rows.append(row)
        docs.append(doc)
    writer.write(rows, docs)
    writer.close()
    panel = Panel(scene.tmp / "panel-pg.log", "--postgres", dsn)
    try:
        open_page(chrome, panel, "/?range=24h", "loaded")
        assert chrome.find_element("id", "n-killed").text == str(len(scene.procs))
        chrome.get(f"{panel.base}/alerts?q={scene.marker}&technique=T1059&severity=high&sort=time&dir=asc")
        rows = chrome.find_elements("css selector", "tr.alert")
        assert len(rows) == len(scene.procs) and all("killed" in r.text for r in rows)
        rows[0].find_element("css selector", "a").click()
        assert f"killed {scene.first.pid}" in chrome.find_element("css selector", "#responses tr.response").text
        assert "exit 137" in chrome.find_element("css selector", "#tree li.alert").text
        assert [n for n in chrome.find_elements("css selector", "#tree li.descendant") if "exit 3" in n.text]
        chrome.find_element("css selector", "#state-form textarea").send_keys("fleet note")
        chrome.find_element("id", "resolve").click()
        wait_for(lambda: state_text(chrome).startswith("resolved"), 10, 0.1, "the state")
        assert query(dsn, "SELECT state, note FROM panel_alert_states") == [("resolved", "fleet note")]
        chrome.get(f"{panel.base}/hosts")
        assert [r.get_attribute("data-id") for r in chrome.find_elements("css selector", "tr.host")] == \
            [open("/etc/machine-id").read().strip()]
    finally:
        panel.stop()
