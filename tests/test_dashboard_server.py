"""`sensor dashboard` refuses unsafe listening, and its login, headers and errors, over HTTP."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT
from dashboardfixtures import Panel
from fleetservers import make_tls


def dashboard(*flags, timeout=30):
    return subprocess.run([sys.executable, "-m", "sensor", "dashboard", *flags], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)


def test_refuses_to_listen_beyond_loopback_without_a_secret_and_tls(tmp_path):
    (tmp_path / "events").mkdir()
    tls = make_tls(tmp_path / "tls")
    cases = [
        (["--listen", "0.0.0.0:0"], "without --token or --password-file"),
        (["--listen", "0.0.0.0:0", "--token", "a-long-enough-token"], "without TLS"),
        (["--listen", "0.0.0.0:0", "--token", "a-long-enough-token", "--tls-cert", tls["server"]],
         "--tls-cert and --tls-key go together"),
        (["--listen", "localhost:8080"], "expected ADDR:PORT"),
        (["--listen", "127.0.0.1:0", "--token", "short"], "at least 8 characters"),
        (["--listen", "127.0.0.1:0", "--password-file", str(tmp_path / "none")], "No such file"),
    ]
    for flags, want in cases:
        r = dashboard("--data-dir", str(tmp_path), *flags)
        assert r.returncode == 2 and want in r.stderr and r.stderr.count("\n") == 1, (flags, r.stderr)
    r = dashboard("--data-dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no events under" in r.stderr


def test_tls_password_login_and_headers(tmp_path):
    """HTTPS and a password file, as a panel off loopback must run (served on loopback here)."""
    import http.cookiejar
    import ssl
    import urllib.parse
    import urllib.request

    (tmp_path / "data" / "events").mkdir(parents=True)
    tls = make_tls(tmp_path / "tls")
    pw = tmp_path / "passwords"
    pw.write_text("# users\nalice:correct horse battery\n")
    panel = Panel(tmp_path / "panel.log", "--data-dir", str(tmp_path / "data"), "--password-file", str(pw),
                  "--tls-cert", tls["server"], "--tls-key", tls["server_key"])
    try:
        assert "https://127.0.0.1:" in panel.output()
        ctx = ssl.create_default_context(cafile=tls["ca"])
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                             urllib.request.HTTPCookieProcessor(jar))
        base = panel.base.replace("http:", "https:")

        def fetch(path, data=None):
            try:
                with opener.open(base + path, data=data, timeout=30) as r:
                    return r.status, r.headers, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers, exc.read().decode()

        status, headers, body = fetch("/alerts")
        assert status == 401 and 'name="password"' in body
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        status, _, body = fetch("/login", urllib.parse.urlencode({"user": "alice", "password": "wrong one"}).encode())
        assert status == 401 and "not right" in body
        status, _, body = fetch("/login", urllib.parse.urlencode({"user": "alice", "password": "correct horse battery",
                                                                  "next": "/hosts"}).encode())
        assert status == 200 and "<h1>Hosts</h1>" in body and "alice" in body
        (cookie,) = list(jar)
        assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
        csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        status, _, body = fetch("/logout", urllib.parse.urlencode({"csrf": csrf}).encode())
        assert status == 200 and fetch("/hosts")[0] == 401
    finally:
        panel.stop()
