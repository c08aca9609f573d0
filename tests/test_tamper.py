"""Self-protection: signals and ptrace aimed at the sensor by other processes become alerts."""
import ctypes
import os
import signal
import sys

from conftest import wait_for


import pytest


# ptrace at the sensor is seen by the security programs when they run, else by a hook of its own
@pytest.mark.parametrize("security", ["--security-enabled", "--no-security-enabled"])
def test_signals_and_ptrace_at_the_sensor_raise_alerts(start_sensor, security):
    s = start_sensor("--rules", "none", security)
    os.kill(s.pid, signal.SIGSTOP)
    os.kill(s.pid, signal.SIGCONT)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    assert libc.ptrace(PTRACE_ATTACH, s.pid, None, None) == 0, ctypes.get_errno()
    os.waitpid(s.pid, 0)  # the tracee stops; detach lets it run on
    assert libc.ptrace(PTRACE_DETACH, s.pid, None, None) == 0
    assert s.stop() == 0  # SIGCONT + SIGTERM from this process too
    alerts = s.events(event__kind="alert")
    got = [(a["event"]["action"], a["sensor"]["tamper"]["signal"], a["sensor"]["tamper"]["ptrace_request"],
            a["process"]["pid"]) for a in alerts]
    me = os.getpid()
    assert ("sensor-signaled", signal.SIGSTOP, None, me) in got
    assert ("sensor-signaled", signal.SIGTERM, None, me) in got
    assert ("sensor-ptraced", None, PTRACE_ATTACH, me) in got
    for a in alerts:
        assert a["rule"]["author"] and a["sensor"]["tamper"]["target_pid"] == s.pid
        assert a["process"]["executable"] == os.path.realpath(sys.executable)
    # the sensor's own children exiting (SIGCHLD) are not tampering
    assert not [g for g in got if g[1] == signal.SIGCHLD]
