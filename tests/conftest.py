"""Fixtures that start the real sensor (as a subprocess, as a user would) and clean up after it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """pytest removes its numbered temp dir (retention "none") but keeps the per-user one it made
    under /tmp: remove that too when empty, so a run leaves /tmp as it found it."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    if base is not None and getattr(factory, "_given_basetemp", None) is None:
        try:
            base.parent.rmdir()  # only if empty: another session's dir keeps it
        except OSError:
            pass


def bpf_programs() -> set[str]:
    """Names of loaded BPF programs, from bpftool (the kernel's view, not ours)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True)
    return {p.get("name", "") for p in json.loads(out.stdout or "[]")}


class Sensor:
    """A running `sensor run` in its own data dir."""

    def __init__(self, data_dir: Path, *flags: str):
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.stderr"
        cmd = [sys.executable, "-m", "sensor", "run", "--data-dir", str(data_dir),
               "--console", "off", *flags]
        self._stderr = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=ROOT)
        wait_for(lambda: b"Ctrl-C stops" in self.log.read_bytes() or self.proc.poll() is not None,
                 timeout=30, what="the sensor to attach")
        if self.proc.poll() is not None:
            raise AssertionError(f"sensor exited {self.proc.returncode}: {self.stderr()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.proc.poll() is None:
            if sig == signal.SIGTERM:
                # a stopped (SIGSTOP) sensor must run to see SIGTERM
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._stderr.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()

    def events(self, **where) -> list[dict]:
        from sensor.store import read_events

        out = []
        for ev in read_events(self.data_dir):
            if all(_get(ev, k.replace("__", ".")) == v for k, v in where.items()):
                out.append(ev)
        return out


def _get(ev, dotted):
    from sensor.schema import get

    return get(ev, dotted)


@pytest.fixture
def start_sensor(tmp_path):
    """start_sensor(*flags) -> Sensor; every sensor started is stopped at teardown."""
    started: list[Sensor] = []

    def start(*flags, data_dir=None):
        s = Sensor(data_dir or tmp_path / f"data{len(started)}", "--health-interval", "1", *flags)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="session", autouse=True)
def no_bpf_leftovers():
    """The suite leaves no eBPF program of ours loaded, even when tests fail."""
    if sys.platform == "win32":  # no eBPF, no bpftool: the Windows runner (.github/workflows/windows.yml)
        yield
        return
    before = bpf_programs()
    yield

    def leaked():
        now = bpf_programs()
        return (now - before) & ({"handle_exec", "handle_fork", "handle_exit"} |
                                 {n for n in now if n.startswith("probe_")})

    # the kernel frees a killed process's programs asynchronously: give it a moment
    try:
        wait_for(lambda: not leaked(), timeout=10, what="eBPF programs to be unloaded")
    except AssertionError:
        raise AssertionError(f"eBPF programs left loaded: {leaked()}") from None
