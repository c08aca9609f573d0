"""Host metrics, checked against the kernel's own accounts (/proc, statvfs) and real traffic."""
import os
import socket
import subprocess
import sys
import threading

import psutil

from sensor.metrics import MetricsSource
from conftest import ROOT


def meminfo(key: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_sample_matches_proc_and_statvfs():
    src = MetricsSource(interval=0.1).start()
    m = src.sample()["host"]["metrics"]
    assert m["memory"]["total"] == meminfo("MemTotal")
    assert abs(m["memory"]["available"] - meminfo("MemAvailable")) < 256 << 20
    assert m["swap"]["total"] == meminfo("SwapTotal")
    assert m["cpu"]["count"] == os.cpu_count() == len(m["cpu"]["cores"])
    assert 0 <= m["cpu"]["usage"] <= 1 and {"user", "system", "idle", "iowait", "steal"} <= set(m["cpu"])
    assert abs(m["cpu"]["load"]["1m"] - float(open("/proc/loadavg").read().split()[0])) < 1.0
    st = os.statvfs("/")
    assert m["disk"]["usage"]["/"]["total"] == st.f_blocks * st.f_frsize
    assert "lo" in m["network"]["interfaces"]
    if not os.path.exists("/dev/nvidiactl"):  # no GPU here: skipped, with the reason said
        assert m["gpu"] == {"available": False, "reason": "no NVIDIA GPU on this host (/dev/nvidiactl absent)"}


def test_network_counters_and_rates_follow_real_traffic():
    src = MetricsSource(interval=0.1).start()
    before = src.sample()["host"]["metrics"]["network"]["interfaces"]["lo"]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def drain():
        conn, _ = srv.accept()
        while conn.recv(1 << 16):
            pass
        conn.close()

    t = threading.Thread(target=drain)
    t.start()
    c = socket.create_connection(srv.getsockname())
    c.sendall(b"x" * (4 << 20))
    c.close()
    t.join()
    srv.close()
    after = src.sample()["host"]["metrics"]["network"]["interfaces"]["lo"]
    assert after["bytes_sent"] - before["bytes_sent"] >= 4 << 20
    assert after["bytes_sent_per_s"] > 0


def test_sensor_emits_samples_at_its_interval(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path), "--console", "off",
                        "--duration", "2.2", "--metrics-interval", "0.5", "--rules", "none", "--no-files-enabled",
                        "--no-network-enabled", "--no-security-enabled"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    from sensor.store import read_events

    events = list(read_events(tmp_path))
    samples = [e for e in events if e["event"]["dataset"] == "host.metrics"]
    # stored with the sample itself beside the host's identity
    assert all(e["host"]["metrics"]["memory"]["total"] == psutil.virtual_memory().total and e["host"]["name"]
               for e in samples)
    assert 3 <= len(samples) <= 6
    final = [e for e in events if e["event"]["dataset"] == "sensor.health"][-1]["sensor"]["health"]
    assert final["sources"]["host.metrics"]["emitted"] == len(samples)
