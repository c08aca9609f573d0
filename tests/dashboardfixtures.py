"""The panel's test parts: a running `sensor dashboard` and a headless Debian chromium driven by
selenium through /usr/bin/chromedriver (nothing downloaded), each stopped at teardown."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from fleetservers import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


class Panel:
    """A `sensor dashboard` subprocess on a free loopback port."""

    def __init__(self, log: Path, *flags: str, token: str = "test-token-0123456789"):
        self.port, self.token, self.log_path = free_port(), token, log
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "dashboard", "--listen",
                                      f"127.0.0.1:{self.port}", "--token", token, *flags],
                                     stdout=self._log, stderr=self._log, cwd=ROOT)
        wait_for(lambda: b"SIGTERM stops" in log.read_bytes() or self.proc.poll() is not None, 60, 0.05,
                 "the panel to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"panel exited {self.proc.returncode}: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, cookie: str | None = None, data: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, headers={"Cookie": cookie} if cookie else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _subreaper(on: bool):
    """Chromium's helpers outlive chromedriver and would be orphaned to an init that may never reap
    them: while a browser runs, orphans come to this process instead, and quit_browser reaps them."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _orphans() -> list[int]:
    """Our chromium children: helpers re-parented here (dead or alive), never the test's own processes."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(rest[1]) == os.getpid() and comm.startswith(("chrom", "chrome_crashpad")):
                out.append(int(d))
    return out


def browser():
    """A headless chromium with its own profile; the caller quits it (see the `chrome` fixture)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _subreaper(True)
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium and chromium-driver are not installed (make deps installs them)")
    profile = tempfile.mkdtemp(prefix="sensor-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    try:
        driver = webdriver.Chrome(service=service, options=opts)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.profile_dir = profile
    return driver


def quit_browser(driver):
    """Quits chromium and chromedriver and checks neither is left, then removes the profile."""
    proc = driver.service.process
    try:
        driver.quit()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
    # chromium's own processes carry the profile dir in their command line: none may remain
    left = subprocess.run(["pgrep", "-f", driver.profile_dir], capture_output=True, text=True).stdout.split()
    for pid in left:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    try:
        wait_for(lambda: not _reap(), 10, 0.05, "chromium's helpers to exit")
    finally:
        _subreaper(False)
    assert not left, f"chromium processes left behind: {left}"


def _reap() -> list[int]:
    """Reaps the chromium helpers that have exited; returns those still running."""
    running = []
    for pid in _orphans():
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                running.append(pid)
        except ChildProcessError:
            pass
    return running


@pytest.fixture(scope="module")
def chrome():
    driver = browser()
    try:
        yield driver
    finally:
        quit_browser(driver)


def console_errors(driver) -> list[str]:
    """The browser's console entries at warning level or above (CSP reports show there)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
