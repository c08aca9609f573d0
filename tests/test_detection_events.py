"""Sigma rules on the kernel's file, network and security events: real activity, real alerts."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, wait_for

SIGMA = ROOT.parent / "shared" / "sigma" / "rules" / "linux"


def alerts(sensor, rule_id):
    return [e for e in sensor.events(event__kind="alert") if e["event"]["module"] == "sigma"
            and e["rule"]["id"] == rule_id]


def test_sigmahq_file_and_network_rules_fire_on_kernel_events(start_sensor, tmp_path):
    s = start_sensor("--files-paths", str(tmp_path), "--rules", str(SIGMA), "--no-metrics-enabled")
    # a file whose name carries a shell payload, created by a real process
    name = "x{echo,aGVsbG8=}|{base64,-d}|bash"
    subprocess.run([sys.executable, "-c", f"open({str(tmp_path / name)!r}, 'w').close()"], check=True)
    # bash's /dev/tcp reverse shell to a listener on a loopback address the rule does not exempt
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    bash = shutil.which("bash")
    subprocess.run([bash, "-c", f"exec 3<>/dev/tcp/127.0.0.2/{port}; echo hi >&3"], check=True)
    listener.accept()[0].close()
    listener.close()
    wait_for(lambda: [e for e in s.events(event__kind="alert") if e["event"]["module"] == "sigma"
                      and e["rule"]["category"] == "network_connection"], what="the network alert")
    assert s.stop() == 0
    got = [e for e in s.events(event__kind="alert") if e["event"]["module"] == "sigma"]
    file_alerts = [e for e in got if e["rule"]["category"] == "file_event"]
    net_alerts = [e for e in got if e["rule"]["category"] == "network_connection"]
    [b64] = [e for e in file_alerts if e["rule"]["id"] == "179b3686-6271-4d87-807d-17d843a8af73"]
    assert b64["file"]["name"] == name and b64["file"]["path"] == str(tmp_path / name)
    [shell] = [e for e in net_alerts if e["rule"]["name"] == "Linux Reverse Shell Indicator"]
    assert shell["destination"]["ip"] == "127.0.0.2" and shell["destination"]["port"] == port
    assert shell["process"]["executable"] == os.path.realpath(bash)
    assert shell["rule"]["author"] == "Florian Roth (Nextron Systems)"


def test_bundled_rules_on_dropped_binary_ptrace_and_module_load(start_sensor, tmp_path):
    s = start_sensor("--no-metrics-enabled", "--no-network-enabled")
    dropped = Path("/tmp") / f"sensor-dropped-{os.getpid()}"
    try:
        # a binary written into /tmp and run from there
        dropped.write_bytes(Path(os.path.realpath("/bin/true")).read_bytes())
        dropped.chmod(0o755)
        subprocess.run([str(dropped)], check=True)
    finally:
        dropped.unlink(missing_ok=True)
    # ptrace attach by a process that is no debugger
    target = subprocess.Popen(["sleep", "30"])
    code = ("import ctypes, os, sys; libc = ctypes.CDLL(None); pid = int(sys.argv[1]);"
            "assert libc.ptrace(16, pid, None, None) == 0; os.waitpid(pid, 0); libc.ptrace(17, pid, None, None)")
    subprocess.run([sys.executable, "-c", code, str(target.pid)], check=True)
    target.kill()
    target.wait()
    # a kernel module from /tmp (not a module at all: refused, still an attempt)
    fake = tmp_path / "rootkit.ko"
    fake.write_bytes(b"\0" * 64)
    code = ("import ctypes, os, sys; libc = ctypes.CDLL(None); fd = os.open(sys.argv[1], os.O_RDONLY);"
            "libc.syscall(313, fd, b'', 0)")
    subprocess.run([sys.executable, "-c", code, str(fake)], check=True)
    ids = {"dropped": "3c1e9a52-6f0b-4d7e-9a41-2b8d5e7f1c06", "ptrace": "9d4b2f70-3a8e-4c15-8e62-5f1a7c3b9d48",
           "module": "5e8a1c3f-9b27-4d60-a4f3-1c7e2b9d6a85"}
    wait_for(lambda: all(alerts(s, i) for i in ids.values()), what="the three alerts")
    assert s.stop() == 0
    [d] = alerts(s, ids["dropped"])
    assert d["process"]["executable"] == str(dropped) and d["process"]["executable_written"] is True
    [p] = alerts(s, ids["ptrace"])
    assert p["target"]["process"]["pid"] == target.pid and p["security"]["ptrace_request"] == "PTRACE_ATTACH"
    [m] = alerts(s, ids["module"])
    assert m["file"]["path"] == str(fake)
    assert all(a["rule"]["author"] == "sensor project" for a in (d, p, m))
    # an ordinary binary from /usr/bin raised none of them
    assert not [a for a in alerts(s, ids["dropped"]) if a["process"]["executable"].startswith("/usr/")]
