"""The platform layer: one interface over sensor.linux and sensor.windows, chosen once, and every
source declaring its optional capabilities instead of being probed for them."""
from __future__ import annotations

import inspect

from sensor import backend, config
from sensor.linux import sources as linux
from sensor.source import CAPABILITIES, PROCESS_TABLE, Source
from sensor.windows import sources as windows
from conftest import ROOT


def test_both_platforms_offer_the_same_functions():
    for name in backend.API:
        lin, win = getattr(linux, name), getattr(windows, name)
        assert list(inspect.signature(lin).parameters) == list(inspect.signature(win).parameters), name
        assert getattr(backend, name) is lin  # this host is Linux: chosen once, at import
    assert backend.NAME == "linux"


def test_the_platform_is_decided_in_one_module():
    """No `sys.platform` tests spread over the package: the backend chooses, the rest asks it."""
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "sensor").rglob("*.py")
             if "sys.platform" in p.read_text()]
    assert found == ["sensor/backend.py"]


def test_sources_declare_capabilities_rather_than_being_probed():
    pipeline = (ROOT / "sensor" / "pipeline.py").read_text()
    assert "hasattr(" not in pipeline and "getattr(s" not in pipeline
    cfg = config.defaults()
    cfg["data_dir"] = "/nonexistent-sensor-data"
    built = linux.build_sources(cfg, blocked=[]) + windows.build_sources(cfg)
    names = {type(s).__name__ for s in built}
    assert {"ProcessSource", "FileSource", "NetSource", "SecuritySource", "BlockSource", "EtwSource",
            "EventLogSource"} <= names, names
    for s in built:
        assert isinstance(s, Source), type(s).__name__
        assert s.capabilities <= CAPABILITIES, (type(s).__name__, s.capabilities)
        for cap in s.capabilities:  # a declared capability is a method of that name
            assert callable(getattr(s, cap)), (type(s).__name__, cap)
    process = next(s for s in built if type(s).__name__ == "ProcessSource")
    assert process.capabilities == CAPABILITIES - {PROCESS_TABLE}
    eventlog = next(s for s in built if type(s).__name__ == "EventLogSource")
    assert eventlog.capabilities == {PROCESS_TABLE}  # it finishes its events, with their winlog fields
    assert all(not s.capabilities for s in built if s not in (process, eventlog))


def test_windows_sessions_and_key_directories():
    cfg = config.defaults()
    cfg["data_dir"] = r"C:\ProgramData\sensor"
    built = windows.build_sources(cfg)
    sessions = {s.name: s.session for s in built if type(s).__name__ == "EtwSource"}
    assert sessions == {"process": "sensor-kernel-process", "process.command_line": "NT Kernel Logger",
                        "file": "sensor-kernel-file", "network": "sensor-kernel-network",
                        "network.dns": "sensor-dns-client", "registry": "sensor-kernel-registry"}
    # the kernel logger's command lines reach Kernel-Process starts through one shared mapper
    assert len({id(s.mapper) for s in built if type(s).__name__ == "EtwSource"}) == 1
    cfg["files.backend"] = "watchdog"
    files = next(s for s in windows.build_sources(cfg) if s.name == "file")
    for path in (r"C:\Users", r"C:\Windows\Temp", r"C:\Windows\Tasks", r"C:\Windows\System32",
                 r"C:\Windows\SysWOW64", r"C:\Windows\WinSxS"):
        assert path in files.paths
    assert any(p.endswith(r"Start Menu\Programs") for p in files.paths)


def test_both_platforms_system_and_kill_modules_offer_the_same_names():
    from sensor.linux import kill as linux_kill, system as linux_system
    from sensor.windows import kill as windows_kill, system as windows_system

    for api, lin, win in ((backend.SYSTEM_API, linux_system, windows_system),
                          (backend.KILL_API, linux_kill, windows_kill)):
        for name in api:
            a, b = getattr(lin, name), getattr(win, name)
            if callable(a) and not isinstance(a, type):
                assert list(inspect.signature(a).parameters)[:1] == list(inspect.signature(b).parameters)[:1], name
    assert backend.system is linux_system and backend.kill is linux_kill
    # the Linux clock is the kernel's: records and /proc agree on it (compared with /proc/uptime)
    uptime_ns = float(open("/proc/uptime").read().split()[0]) * 1e9
    assert abs(linux_system.boot_ns() - uptime_ns) < 2e9


# What `sensor run` would meet on Windows, emulated on Linux: the Windows backend (SENSOR_PLATFORM),
# no pwd/grp/fcntl modules, and none of the POSIX-only names of os, signal and time. psutil is
# imported first: its Linux half needs `resource`, which the Windows psutil does not.
RUN_AS_WINDOWS = r"""
import os, signal, sys, time
import psutil
for m in ("pwd", "grp", "fcntl", "resource"):
    sys.modules[m] = None
for mod, names in ((os, ("O_CLOEXEC", "O_DIRECTORY", "O_NOFOLLOW", "O_NONBLOCK", "chown", "pidfd_open", "major", "getloadavg",
                         "getuid", "geteuid",
                         "minor")),
                   (signal, ("SIGHUP",)), (time, ("CLOCK_BOOTTIME", "clock_gettime_ns"))):
    for n in names:
        delattr(mod, n)
if sys.argv[1] == "-c":  # a check of its own, in this emulation
    exec(sys.argv[2])
    sys.exit(0)
from sensor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sensor_run_starts_on_the_windows_backend_without_posix_modules(tmp_path):
    """Every module `sensor run` imports loads without pwd, grp, fcntl, CLOCK_BOOTTIME or SIGHUP;
    the Windows sources are built from the default config; those that cannot start here (no
    pywintrace, no pywin32) fall back or are left out with their reason in sensor.health, and
    the SigmaHQ Windows rules load through the Windows rule set."""
    import subprocess
    import sys

    from sensor.store import read_events

    script = tmp_path / "run_as_windows.py"
    script.write_text(RUN_AS_WINDOWS)
    data = tmp_path / "data"
    rules = ROOT / "tests" / "data" / "sigma" / "rules" / "windows"
    r = subprocess.run([sys.executable, str(script), "run", "--data-dir", str(data), "--duration", "3",
                        "--console", "off", "--rules", f"builtin,{rules}", "--health-interval", "1", "--sink", "csv"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**__import__("os").environ, "SENSOR_PLATFORM": "windows"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    events = list(read_events(data))
    final = [e for e in events if e["event"]["dataset"] == "sensor.health" and e["sensor"]["health"]["final"]]
    health = final[-1]["sensor"]["health"]
    fallbacks = health["fallbacks"]
    # each ETW session and the Event Log said why it could not start; the process and file
    # sources fell back to psutil and watchdog, the others were left out
    assert {"process", "process.command_line", "file", "network", "network.dns", "registry", "eventlog",
            "host.services"} <= set(fallbacks), fallbacks
    assert "pywintrace unavailable" in fallbacks["process"] and "pywin32 unavailable" in fallbacks["eventlog"]
    assert {"process", "file", "host.metrics", "host.processes"} <= set(health["sources"])
    # the Windows rule set: SigmaHQ's Windows rules loaded beside the builtin Linux ones
    loaded = health["rules"]["loaded"]
    linux_only = subprocess.run([sys.executable, "-c", "from sensor.pipeline import load_rules; "
                                 f"print(len(load_rules('builtin').rules))"], capture_output=True, text=True,
                                cwd=ROOT, check=True)
    assert loaded > int(linux_only.stdout), (loaded, linux_only.stdout)
    assert events[0]["host"]["os"]["type"] == "windows"
    # the process cache was seeded without uids: a seeded process's user is its account name
    execs = [e for e in events if e["event"].get("action") == "exec" or e["event"]["dataset"] == "host.processes"]
    assert execs
    # the CSV sink opened its files with the platform's flags, not O_CLOEXEC: a table per collector
    tables = {p.name.split("-")[0].removesuffix(".csv") for p in (data / "csv").iterdir()}
    assert {"hw_resources", "processes"} <= tables, tables


# the quarantine and the executable hasher as Windows runs them: no chown, no O_NOFOLLOW/O_NONBLOCK
QUARANTINE_AS_WINDOWS = r"""
import os, stat
from pathlib import Path
from sensor.backend import NAME, system
from sensor.filehash import ExecutableHasher, sha256_file
from sensor.quarantine import Quarantine

assert NAME == "windows" and not hasattr(os, "chown")
tmp = Path(os.environ["TMP_DIR"])
exe = tmp / "tool.exe"
exe.write_bytes(b"MZ" + os.urandom(64))
exe.chmod(0o755)
digest = sha256_file(exe)
h = ExecutableHasher()
event = {"event": {"action": "create"}, "file": {"path": str(exe), "mode": "0755"}}
h.annotate(event)
assert event["file"]["hash"]["sha256"] == digest, event
link = tmp / "link.exe"
link.symlink_to(exe)
linked = {"event": {"action": "create"}, "file": {"path": str(link), "mode": "0755"}}
h.annotate(linked)
assert "hash" not in linked["file"] and h.stats["unreadable"] == 1, (linked, h.stats)
q = Quarantine(tmp / "data")
record = q.put(str(exe), {"rule": "test"})
assert not exe.exists()
back = q.restore(record["id"])
assert Path(back["restored_to"]) == exe and sha256_file(exe) == digest
assert stat.S_IMODE(exe.stat().st_mode) == 0o755 and q.list() == []
assert system.system_file(os.environ.get("SystemRoot", r"C:\Windows") + r"\System32\cmd.exe")
assert system.system_file(r"c:\windows\system32\CMD.EXE") and not system.system_file(r"C:\Users\a\x.exe")
print("ok")
"""


def test_quarantine_and_hashing_run_without_posix_calls(tmp_path):
    """A quarantined file comes back whole without os.chown; executables are hashed, and
    symlinks refused, without O_NOFOLLOW; Windows' own directories count as system files."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run_as_windows.py"
    script.write_text(RUN_AS_WINDOWS)
    r = subprocess.run([sys.executable, str(script), "-c", QUARANTINE_AS_WINDOWS], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "SENSOR_PLATFORM": "windows", "TMP_DIR": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


# the fleet's outbox as Windows runs it: its segments written, read back and acknowledged
OUTBOX_AS_WINDOWS = r"""
import os
from pathlib import Path
from sensor.fleet.outbox import Outbox
box = Outbox(Path(os.environ["TMP_DIR"]) / "outbox", segment_bytes=4096)
records = [b"sensor.events.h.process id%d {}\n" % i for i in range(500)]
box.append(records)
got = []
while len(got) < 500:
    batch = box.read(100)
    box.ack(batch[-1][0], len(batch))
    got += [r for _, r in batch]
assert got == records and box.pending == 0, (len(got), box.pending)
box.close()
print("ok")
"""


def test_fleet_outbox_runs_without_posix_calls(tmp_path):
    """The outbox (and with it `--sink nats`) opens its segments with the platform's flags:
    written across segments, read back whole and acknowledged without O_CLOEXEC."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run_as_windows.py"
    script.write_text(RUN_AS_WINDOWS)
    r = subprocess.run([sys.executable, str(script), "-c", OUTBOX_AS_WINDOWS], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "SENSOR_PLATFORM": "windows", "TMP_DIR": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_the_live_event_log_path_gives_what_sensor_hunt_gives(tmp_path):
    """The Event Log source's records (EvtRender's XML, here rendered by the evtx package from
    recorded Sysmon logs) become the same events as `sensor hunt` makes of the .evtx file,
    with winlog channel, event id, record id and provider name."""
    from evtx import PyEvtxParser

    from sensor.hunt import Hunt
    from sensor.processes import ProcessTable
    from sensor.windows.eventlog import EventLogSource
    from sensor.windows.host import RecordedHost
    from sensor.windows.mappers import Mapper

    path = ROOT / "tests" / "data" / "evtx" / "sysmon-first-4-chunks.evtx"
    src = EventLogSource(Mapper(None))
    src.process_table(ProcessTable(RecordedHost(str(path), "recorded")))
    xml = [rec["data"] for rec in PyEvtxParser(str(path)).records()]
    src._queue.extend(xml)  # what _on_event queues: EvtRender(handle, EvtRenderEventXml)
    live = src.poll()
    hunted = list(Hunt(None).normalized(path))
    assert len(live) == len(hunted) > 100

    def key(e):
        w = e["winlog"]
        return (w["channel"], w["event_id"], w["record_id"], w["provider_name"], e["event"]["module"],
                e["event"].get("action"), e.get("process", {}).get("command_line"),
                e.get("process", {}).get("entity_id"), e.get("process", {}).get("parent", {}).get("entity_id"))
    assert [key(e) for e in live] == [key(e) for e in hunted]
    starts = [e for e in live if e["winlog"]["event_id"] == 1]
    assert starts and all(e["winlog"]["channel"] == "Microsoft-Windows-Sysmon/Operational" and
                          e["winlog"]["provider_name"] == "Microsoft-Windows-Sysmon" and
                          isinstance(e["winlog"]["record_id"], int) and e["process"]["command_line"] for e in starts)
    assert src.stats()["lost_user"] == 0


def _etw_start(ev) -> dict:
    """The Kernel-Process start ETW gives for the process a Sysmon 1 record names (pywintrace's
    shape, as tests/data/windows/etw_events.json holds it): its pid, parent, image and creation time."""
    from sensor.windows.winevent import FILETIME_EPOCH, time_ns

    created = time_ns(ev.data["UtcTime"]) // 100 + FILETIME_EPOCH
    return {"EventHeader": {"ProcessId": 4, "ThreadId": 8, "TimeStamp": created + 1,
                            "ProviderId": "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}",
                            "EventDescriptor": {"Id": 1, "Version": 3}},
            "ProcessID": ev.data["ProcessId"], "ParentProcessID": ev.data["ParentProcessId"],
            "CreateTime": str(created), "ImageName": ev.data["Image"], "SessionID": 0}


def test_a_process_that_etw_and_sysmon_both_report_starts_once(tmp_path):
    """With ETW's Kernel-Process and the Event Log's Sysmon 1 both on, each process gets one exec
    event: the first report's. The later one is merged into the process cache (Sysmon's working
    directory and account name join ETW's process) and counted in the Event Log source's stats."""
    from evtx import PyEvtxParser

    from sensor.processes import ProcessTable
    from sensor.windows.eventlog import EventLogSource
    from sensor.windows.host import RecordedHost
    from sensor.windows.mappers import Mapper
    from sensor.windows.starts import Starts
    from sensor.windows.winevent import from_event_xml, from_pywintrace

    path = ROOT / "tests" / "data" / "evtx" / "sysmon-first-4-chunks.evtx"
    xml = [rec["data"] for rec in PyEvtxParser(str(path)).records()]
    sysmon = [e for e in map(from_event_xml, xml) if e.event_id == 1]
    assert len(sysmon) > 100 and len({e.data["ProcessId"] for e in sysmon}) < len(sysmon)  # pids reused, later

    def sensor(etw_first: bool):
        """What build_sources wires: one Starts for the ETW mapper and the Event Log source."""
        table, starts = ProcessTable(RecordedHost(str(path), "recorded")), Starts()
        etw, src = Mapper(None, starts=starts), EventLogSource(Mapper(None, starts=starts))
        src.process_table(table)
        events = []

        def from_etw():
            records = [r for e in sysmon for r in etw.map(from_pywintrace(1, _etw_start(e)))] + etw.flush()
            events.extend(table.handle(r) for r in records)  # the pipeline's part for ETW records

        def from_eventlog():
            src._queue.extend(xml)
            events.extend(src.poll())
        for step in ((from_etw, from_eventlog) if etw_first else (from_eventlog, from_etw)):
            step()
        return events, table, src

    events, table, src = sensor(etw_first=True)
    execs = [e for e in events if e["event"].get("action") == "exec"]
    # one per process, a reused pid included (another start time): ETW's, the first
    assert sorted(e["process"]["pid"] for e in execs) == sorted(int(e.data["ProcessId"]) for e in sysmon)
    assert all("winlog" not in e for e in execs)
    assert src.stats()["merged_starts"] == len(sysmon)
    first = sysmon[0]
    proc = table.live[int(first.data["ProcessId"])]
    assert proc.cwd == first.data["CurrentDirectory"]  # Sysmon's, merged into ETW's process
    assert proc.account["qualified_name"] == first.data["User"]
    # every started process's cache entry has them, so its later events (its exit) carry them
    latest = {int(e.data["ProcessId"]): e for e in sysmon}
    assert all(table.live[pid].ecs(table.host)["working_directory"] == e.data["CurrentDirectory"] and
               table.live[pid].account["name"] for pid, e in latest.items())

    events, table, src = sensor(etw_first=False)  # Sysmon's came first: ETW's repeats are dropped
    execs = [e for e in events if e is not None and e["event"].get("action") == "exec"]
    assert len(execs) == len(sysmon) and all(e["winlog"]["event_id"] == 1 for e in execs)
    assert all(e["process"]["hash"]["sha256"] for e in execs)  # Sysmon's richer fields
    assert src.stats()["merged_starts"] == len(sysmon)
