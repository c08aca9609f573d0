"""The Windows mappers on recorded events: pywintrace-shaped ETW dicts (built from the providers'
manifest field names) and Event Log records (the evtx package's JSON), through the same builders
as Linux. golden.json holds the expected events; UPDATE_GOLDEN=1 rewrites it (then read the diff)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from sensor.processes import ProcessTable
from sensor.windows.host import RecordedHost
from sensor.windows.mappers import Mapper, module_of, split_command_line
from sensor.windows.paths import Drives, registry_path
from sensor.windows.providers import load
from sensor.windows.winevent import from_evtx, from_pywintrace

DATA = Path(__file__).parent / "data" / "windows"
DRIVES = {"\\Device\\HarddiskVolume3": "C:", "\\Device\\HarddiskVolume4": "D:"}


def recorded():
    etw = [from_pywintrace(r["id"], r["event"]) for r in json.loads((DATA / "etw_events.json").read_text())]
    evtx = [from_evtx(r) for r in json.loads((DATA / "eventlog_records.json").read_text())]
    return etw + evtx


def run(events, join_seconds=1.0):
    table = ProcessTable(RecordedHost("test-boot", "WKS-7"))
    mapper = Mapper(table, Drives(DRIVES), join_seconds)
    out = []

    def handle(items, module):
        for item in items:
            ev = item if isinstance(item, dict) else table.handle(item)
            if ev is not None:
                ev["event"]["module"] = module  # as the pipeline and `sensor hunt` set it
                out.append(ev)
    for ev in events:
        handle(mapper.map(ev), module_of(ev))
    handle(mapper.flush(), "etw")
    return out, mapper


def test_every_defined_event_has_a_recording():
    seen = {(e.provider, e.event_id) for e in recorded()}
    defined = {(p.name, eid) for p in load().values() for eid in p.events}
    assert defined == seen, defined ^ seen


def test_recorded_events_map_to_the_golden_events():
    out, mapper = run(recorded())
    assert mapper.unknown == 0
    golden = DATA / "golden.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    assert out == json.loads(golden.read_text())


def test_a_kernel_process_start_gets_its_command_line_and_entity():
    out, _ = run(recorded())
    start = next(e for e in out if e["event"]["action"] == "exec" and e["process"]["pid"] == 7320)
    p = start["process"]
    assert p["executable"] == "C:\\Windows\\System32\\whoami.exe" and p["name"] == "whoami.exe"
    assert p["command_line"] == "whoami  /all" and p["args"] == ["whoami", "/all"]  # from the NT Kernel Logger
    assert p["start"] == "2024-01-20T09:20:00.000000000Z"
    assert start["user"] == {"id": "S-1-5-21-1004336348-1177238915-682003330-1001"}
    # the parent came from the rundown: its entity id and image, as /proc's snapshot gives them on Linux
    assert p["parent"]["pid"] == 5200 and p["parent"]["executable"] == "C:\\Windows\\System32\\cmd.exe"
    rundown_entity = p["parent"]["entity_id"]
    end = next(e for e in out if e["event"]["action"] == "exit" and e["process"]["pid"] == 7320)
    assert end["process"]["entity_id"] == p["entity_id"] and end["process"]["exit_code"] == 7
    assert end["event"]["duration"] == 1_500_000_000
    assert end["process"]["parent"]["entity_id"] == rundown_entity
    # file, network, dns and registry events of that process name it, through the cache
    for e in out:
        if e["event"]["dataset"] in ("file", "registry", "network.dns") and e["process"]["pid"] == 7320:
            assert e["process"]["entity_id"] == p["entity_id"] and e["process"]["executable"] == p["executable"]


def test_nt_paths_and_registry_keys_read_as_users_write_them():
    out, _ = run(recorded())
    files = [(e["event"]["action"], e["file"]["path"]) for e in out if e["event"]["dataset"] == "file"]
    assert ("create", "C:\\Users\\alice\\AppData\\Local\\Temp\\evil.ps1") in files
    assert ("link", "D:\\share\\run.lnk") in files
    evil = next(e for e in out if e["event"]["dataset"] == "file")["file"]
    assert evil["name"] == "evil.ps1" and evil["extension"] == "ps1"
    assert evil["directory"] == "C:\\Users\\alice\\AppData\\Local\\Temp"
    reg = [(e["event"]["action"], e["registry"]["path"]) for e in out if e["event"]["dataset"] == "registry"]
    assert ("create-key", "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run") in reg
    assert ("set-value", "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater") in reg
    assert ("delete-key", "HKU\\S-1-5-21-1004336348-1177238915-682003330-1001\\Software\\Acme") in reg
    d = Drives(DRIVES)
    assert d.path("\\Device\\HarddiskVolume30\\x") == "\\Device\\HarddiskVolume30\\x"  # not volume 3's
    assert d.path("\\??\\C:\\Windows\\x.sys") == "C:\\Windows\\x.sys"
    assert d.path("\\SystemRoot\\System32\\drivers\\x.sys") == "C:\\Windows\\System32\\drivers\\x.sys"
    assert registry_path("\\REGISTRY\\MACHINE") == "HKLM" and registry_path("\\Registry\\User\\S-1-5-18") == "HKU\\S-1-5-18"
    assert registry_path("\\REGISTRY\\MACHINEX\\y") == "\\REGISTRY\\MACHINEX\\y"


def test_sysmon_and_security_process_creation_fill_the_linux_fields():
    out, _ = run(recorded())
    ps = next(e for e in out if e["event"]["action"] == "exec" and e["process"]["pid"] == 6120)
    p = ps["process"]
    assert p["command_line"] == "powershell.exe -nop -w hidden -enc SQBFAFgA"
    assert p["parent"]["executable"].endswith("\\WINWORD.EXE") and "invoice.docm" in p["parent"]["command_line"]
    assert p["pe"]["original_file_name"] == "PowerShell.EXE" and p["hash"]["sha256"].startswith("9f914d42")
    assert p["working_directory"] == "C:\\Users\\alice\\" and ps["user"] == {"name": "alice", "domain": "CORP",
                                                                          "qualified_name": "CORP\\alice"}
    who = next(e for e in out if e["event"]["action"] == "exec" and e["process"]["pid"] == 0x1F2C)
    assert who["process"]["parent"]["pid"] == 0x17E8 and who["process"]["parent"]["entity_id"] == p["entity_id"]
    assert who["user"]["id"] == "S-1-5-21-1004336348-1177238915-682003330-1001"
    conn = next(e for e in out if e["event"]["dataset"] == "network" and e["process"]["pid"] == 6120)
    assert conn["destination"] == {"ip": "203.0.113.9", "port": 4444, "domain": "c2.example.net"}
    assert conn["source"]["domain"] == "WKS-7.corp.example" and conn["network"]["direction"] == "egress"
    dns = next(e for e in out if e["event"]["dataset"] == "network.dns" and e["process"]["pid"] == 6120)
    assert dns["dns"]["question"]["name"] == "pastebin.com" and dns["dns"]["resolved_ip"] == ["104.20.67.143", "104.20.68.143"]
    nx = next(e for e in out if e["event"]["dataset"] == "network.dns" and e["dns"]["question"]["name"] == "nx.example.com")
    assert nx["dns"]["response_code"] == "NXDOMAIN" and nx["dns"]["question"]["type"] == "AAAA"
    services = [e for e in out if e["event"]["dataset"] == "host.services"]
    assert [(s["event"]["code"], s["service"]["name"], s["service"]["start_mode"]) for s in services] == \
        [("4697", "PSEXESVC", "manual"), ("7045", "PSEXESVC", "manual")]
    logons = [(e["event"]["code"], e["event"]["outcome"], e["user"]["name"]) for e in out if e["event"]["dataset"] == "host.logins"]
    assert logons == [("4624", "success", "alice"), ("4625", "failure", "admin")]


def test_a_start_waits_for_its_command_line_and_goes_without_it_in_time():
    events = recorded()
    logger = next(e for e in events if e.provider == "Windows Kernel Trace")
    start = next(e for e in events if e.provider == "Microsoft-Windows-Kernel-Process" and e.event_id == 1)
    out, _ = run([start, logger])  # the other order: the start is held until the command line comes
    assert [e["process"]["command_line"] for e in out] == ["whoami  /all"]
    out, _ = run([start, start._replace(ts_ns=start.ts_ns + 2_000_000_000, data={**start.data, "ProcessID": 1})])
    assert out[0]["process"]["pid"] == 7320 and out[0]["process"]["command_line"] == ""  # none came in a second


def test_windows_command_lines_split_as_the_c_runtime_does():
    assert split_command_line('"C:\\Program Files\\a b\\x.exe" /c "echo hi"') == \
        ["C:\\Program Files\\a b\\x.exe", "/c", "echo hi"]
    assert split_command_line('a\\\\\\"b c') == ['a\\"b', "c"]
    assert split_command_line('"a\\\\" b') == ["a\\", "b"]
    assert split_command_line("ping  -n 6 ") == ["ping", "-n", "6"]


def test_a_live_event_log_record_maps_as_its_evtx_twin():
    """EvtRender's XML (the live reader) and the inventory's own decoder give the same logon."""
    from sensor.windows.logins import decode, parse_event_xml
    from sensor.windows.winevent import from_event_xml

    xml = (DATA.parent / "windows_4625.xml").read_text()
    ev = from_event_xml(xml)
    assert (ev.provider, ev.event_id, ev.channel, ev.record_id, ev.pid) == \
        ("Microsoft-Windows-Security-Auditing", 4625, "Security", 229977, 516)
    out, _ = run([ev])
    inventory = decode(parse_event_xml(xml))
    inventory["event"]["module"] = "security"
    assert out == [inventory]
    assert out[0]["user"]["name"] == "Administrator" and out[0]["event"]["reason"] == "wrong password"


SIGMA = Path(__file__).resolve().parents[2] / "shared" / "sigma" / "rules" / "windows"
# (SigmaHQ rule, the recorded event it must match, what makes that event innocent)
SIGMA_CASES = [
    ("image_load/image_load_dll_dbghelp_dbgcore_unsigned_load.yml", 7,
     {"ImageLoaded": "C:\\Windows\\System32\\dbghelp.dll", "Signed": "true"}),
    ("driver_load/driver_load_win_susp_temp_use.yml", 6, {"ImageLoaded": "C:\\Windows\\System32\\drivers\\gdrv.sys"}),
    ("driver_load/driver_load_win_vuln_drivers.yml", 6, {"Hashes": "SHA256=" + "0" * 64}),  # Sysmon's Hashes, split
    ("process_access/proc_access_win_lsass_memdump.yml", 10, {"SourceUser": "NT AUTHORITY\\SYSTEM"}),
    ("create_remote_thread/create_remote_thread_win_powershell_lsass.yml", 8,
     {"TargetImage": "C:\\Windows\\System32\\notepad.exe"}),
    ("raw_access_thread/raw_access_thread_susp_disk_access_using_uncommon_tools.yml", 9,
     {"Image": "C:\\Windows\\System32\\svchost.exe"}),
    ("pipe_created/pipe_created_pua_paexec_default_pipe.yml", 17, {"PipeName": "\\mojo.7812.1"}),
    ("powershell/powershell_script/posh_ps_potential_invoke_mimikatz.yml", 4104, {"ScriptBlockText": "Get-ChildItem C:\\"}),
    ("powershell/powershell_module/posh_pm_bad_opsec_artifacts.yml", 4103, {"Payload": "CommandInvocation(Get-Date)"}),
    ("file/file_delete/file_delete_win_delete_backup_file.yml", 23, {"TargetFilename": "D:\\backup\\payroll.docx"}),
    ("network_connection/net_connection_win_domain_btunnels.yml", 3, {"DestinationHostname": "btunnel.co.in.example"}),
]


def _hunted(rules, event_id, changes=None, guilty=None):
    """The rules matching the events the recorded record `event_id` makes (after the Sysmon
    process start its process comes from), with `changes` to its fields."""
    events = recorded()
    start = next(e for e in events if e.provider == "Microsoft-Windows-Sysmon" and e.event_id == 1)
    ev = next(e for e in events if e.event_id == event_id and e.channel is not None)
    if guilty:
        ev = ev._replace(data={**ev.data, **guilty})
    if changes:
        ev = ev._replace(data={**ev.data, **changes})
    out, _ = run([start, ev])
    return {r.title for e in out[1:] for r in rules.match(e)}


def test_sigmahq_rules_of_each_new_category_match_the_recorded_event_and_not_an_innocent_one():
    from sensor.windows.sigma import WindowsRuleSet

    for path, event_id, innocent in SIGMA_CASES:
        rules = WindowsRuleSet.load([SIGMA / path])
        assert [r.status for r in rules.reports] == ["ok"], (path, rules.reports)
        title = rules.rules[0].title
        guilty = {"DestinationHostname": "relay.btunnel.co.in"} if event_id == 3 else None
        assert _hunted(rules, event_id, guilty=guilty) == {title}, path
        assert _hunted(rules, event_id, {**(guilty or {}), **innocent}) == set(), path


def test_sigma_user_matches_domain_and_name_whole_on_sysmon_and_security():
    """SigmaHQ writes `User|contains: AUTHORI` for SYSTEM; Sysmon writes `NT AUTHORITY\\SYSTEM`,
    Security the name and the domain apart: both become user.name + user.domain, and both match."""
    from sensor.windows.sigma import WindowsRuleSet

    rules = WindowsRuleSet.load([SIGMA / "process_creation/proc_creation_win_taskmgr_localsystem.yml"])
    events = recorded()
    sysmon = next(e for e in events if e.provider == "Microsoft-Windows-Sysmon" and e.event_id == 1)
    security = next(e for e in events if e.event_id == 4688)
    taskmgr = "C:\\Windows\\System32\\Taskmgr.exe"
    cases = [(sysmon, {"Image": taskmgr, "User": "NT AUTHORITY\\SYSTEM"}, True),
             (sysmon, {"Image": taskmgr, "User": "CORP\\alice"}, False),
             (security, {"NewProcessName": taskmgr, "SubjectUserName": "SYSTEM", "SubjectDomainName": "NT AUTHORITY"}, True),
             (security, {"NewProcessName": taskmgr}, False)]
    for ev, data, hit in cases:
        out, _ = run([ev._replace(data={**ev.data, **data})])
        start = next(e for e in out if e["event"]["action"] == "exec")
        if hit:
            assert start["user"]["name"] == "SYSTEM" and start["user"]["domain"] == "NT AUTHORITY"
        assert bool(rules.match(start)) == hit, (ev.event_id, data)
