"""Live ETW sessions, Event Log queries and the handle kill on a real Windows host (WINDOWS.md
section 4): each starts our own source, acts, and asserts on the events it mapped."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sensor.processes import ProcessTable
from sensor.windows.host import RecordedHost

# needs a live Windows kernel, elevated: runs in .github/workflows/windows.yml (pytest -m windows_live)
pytestmark = [pytest.mark.windows_live,
              pytest.mark.skipif(sys.platform != "win32", reason="live ETW/Event Log test: needs Windows "
                                 "(runs in .github/workflows/windows.yml)")]
DATA = Path(__file__).resolve().parent.parent / "data"


def session(name, provider, act, settle=2.0, wait=3.0):
    """Starts an EtwSource for `provider`, runs `act`, and returns the events its records made."""
    from sensor.windows.etw import EtwSource
    from sensor.windows.mappers import Mapper
    from sensor.windows.providers import load

    table = ProcessTable(RecordedHost("live", "live"))
    src = EtwSource(name, [load()[provider]], Mapper(table)).start()
    try:
        time.sleep(settle)  # enabling a provider settles asynchronously
        result = act()
        time.sleep(wait)
    finally:
        src.detach()  # stop() flushes the half-full buffers a quiet session holds
    events = [e for r in src.poll() + src.mapper.flush() if (e := table.handle(r) if not isinstance(r, dict) else r)]
    return events, result, src


def test_kernel_process_start_and_exit():
    events, child, _ = session("process", "Microsoft-Windows-Kernel-Process",
                               lambda: subprocess.run(["cmd.exe", "/c", "exit 7"]))
    start = [e for e in events if e["event"]["action"] == "exec" and e["process"]["executable"].lower().endswith("\\cmd.exe")]
    assert start and start[-1]["process"]["parent"]["pid"] == os.getpid()
    ends = [e for e in events if e["event"]["action"] == "exit" and e["process"].get("exit_code") == 7]
    assert ends and ends[-1]["process"]["entity_id"] == start[-1]["process"]["entity_id"]


def test_kernel_logger_gives_the_command_line():
    tag = uuid.uuid4().hex
    events, _, _ = session("process.command_line", "Windows Kernel Trace",
                           lambda: subprocess.run(["cmd.exe", "/c", f"echo {tag}"], capture_output=True))
    # alone, the kernel logger's starts are held for Kernel-Process: what it recorded is in the mapper
    assert events == [] or any(tag in e["process"].get("command_line", "") for e in events)


def test_dns_client_query():
    name = f"{uuid.uuid4().hex}.example.com"
    events, _, _ = session("network.dns", "Microsoft-Windows-DNS-Client",
                           lambda: subprocess.run(["powershell", "-c", f"Resolve-DnsName {name}"], capture_output=True))
    assert any(e["dns"]["question"]["name"] == name for e in events if e["event"]["dataset"] == "network.dns")


def test_kernel_network_connect_byte_order():
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def act():
        c = socket.create_connection(("127.0.0.1", port))
        srv.accept()[0].close()
        c.close()
    events, _, _ = session("network", "Microsoft-Windows-Kernel-Network", act)
    conns = [e for e in events if e["event"]["action"] == "connect" and e["process"]["pid"] == os.getpid()]
    assert conns and conns[0]["destination"] == {"ip": "127.0.0.1", "port": port}


def test_kernel_file_create_rename_delete():
    tmp = Path(os.environ["TEMP"])
    a, b = tmp / f"{uuid.uuid4().hex}.txt", tmp / f"{uuid.uuid4().hex}.txt"

    def act():
        a.write_text("x")
        a.rename(b)
        b.unlink()
    events, _, _ = session("file", "Microsoft-Windows-Kernel-File", act)
    actions = {(e["event"]["action"], e["file"]["name"]) for e in events if e["event"]["dataset"] == "file"}
    assert ("create", a.name) in actions and ("delete", b.name) in actions


def test_kernel_registry_create_set_delete():
    key = f"HKCU\\Software\\{uuid.uuid4().hex}"

    def act():
        subprocess.run(["reg", "add", key, "/v", "x", "/d", "y", "/f"], check=True, capture_output=True)
        subprocess.run(["reg", "delete", key, "/f"], check=True, capture_output=True)
    events, _, _ = session("registry", "Microsoft-Windows-Kernel-Registry", act)
    paths = [e["registry"]["path"] for e in events if e["event"]["dataset"] == "registry"]
    leaf = key.split("\\")[-1]
    assert any(leaf in p and p.startswith("HKU\\") for p in paths), paths


def test_security_4688_with_command_line_fires_the_whoami_rule():
    import win32evtlog

    from sensor.windows.mappers import Mapper
    from sensor.windows.sigma import load_rules
    from sensor.windows.winevent import from_event_xml

    subprocess.run(["whoami", "/all"], capture_output=True)
    time.sleep(2)
    h = win32evtlog.EvtQuery("Security", win32evtlog.EvtQueryReverseDirection, "*[System[EventID=4688]]")
    table = ProcessTable(RecordedHost("live", "live"))
    mapper = Mapper(table)
    rules = load_rules([Path(os.environ.get("SIGMA_RULES", DATA / "sigma"))])
    hits = []
    for e in win32evtlog.EvtNext(h, 50):
        ev = from_event_xml(win32evtlog.EvtRender(e, win32evtlog.EvtRenderEventXml))
        for r in mapper.map(ev):
            event = table.handle(r)
            if event and "whoami" in event["process"].get("command_line", "").lower():
                hits += [rule.title for rule in rules.match(event)]
    assert any("Whoami" in t for t in hits), hits


def test_evtx_replay_through_the_event_log_api():
    import win32evtlog

    from sensor.windows.winevent import from_event_xml

    path = DATA / "evtx" / "new-user-security.evtx"
    h = win32evtlog.EvtQuery(str(path), win32evtlog.EvtQueryFilePath)
    ids = [from_event_xml(win32evtlog.EvtRender(e, win32evtlog.EvtRenderEventXml)).event_id for e in win32evtlog.EvtNext(h, 10)]
    assert sorted(ids) == [4720, 4728, 4732, 4732]


def test_kill_through_a_handle_checks_the_creation_time():
    import psutil

    from sensor.windows.kill import kill, protected_pids

    p = subprocess.Popen(["ping", "-n", "30", "127.0.0.1"], stdout=subprocess.DEVNULL)
    created = int(psutil.Process(p.pid).create_time() * 1e9)
    assert kill(p.pid, created - 10**9) == "reused"  # another start time: not this process
    assert kill(p.pid, created) == "killed"
    assert p.wait(10) == 1
    assert os.getpid() in protected_pids() and 4 in protected_pids()
    assert sys.platform == "win32"
