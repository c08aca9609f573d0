"""Users and logins (host.logins): a followed auth log (with rotation), journal entries, utmp
sessions checked against `who`, and Windows Security/System records decoded from recordings."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from sensor.inventory import LoginInventory
from sensor.inventory.authlog import FileFollower, decode_journal, decode_line
from sensor.windows.logins import decode, parse_event_xml
from sensor.schema import parse_time, rfc3339

DATA = Path(__file__).parent / "data"

# Lines as sshd, sudo and su write them through syslog (RFC 3164 stamps, and Debian 12's rsyslog
# high-precision RFC 3339 ones), with the noise around them that must not become events.
LINES = [
    "Mar  3 10:15:01 web1 CRON[100]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    "Mar  3 10:15:01 web1 sshd[20345]: Accepted password for alice from 192.0.2.10 port 52144 ssh2",
    "Mar  3 10:15:05 web1 sshd[20391]: Invalid user admin from 198.51.100.23 port 40022",
    "Mar  3 10:15:09 web1 sshd[20391]: Failed password for invalid user admin from 198.51.100.23 port 40022 ssh2",
    "Mar  3 10:15:12 web1 sshd[20392]: Failed password for root from 198.51.100.23 port 40024 ssh2",
    "Mar  3 10:15:20 web1 sshd[20400]: Accepted publickey for bob from 2001:db8::5 port 50122 ssh2: ED25519 "
    "SHA256:Nq7vUzTEBkJlB4mUq0bH3oJ3V1L3dQ8pS0u3kq2wG7c",
    "Mar  3 10:16:00 web1 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
    "Mar  3 10:16:00 web1 sudo: pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
    "Mar  3 10:16:30 web1 sudo:      bob : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/home/bob ; USER=root ; "
    "COMMAND=/usr/bin/cat /etc/shadow",
    "Mar  3 10:16:40 web1 sudo:  mallory : user NOT in sudoers ; TTY=pts/2 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh -c id ; ls",
]
DEBIAN12 = [
    "2024-03-03T10:17:00.123456+01:00 web1 sshd[20500]: Accepted password for carol from 192.0.2.11 port 40100 ssh2",
    "2024-03-03T10:18:00.000000+01:00 web1 su[20600]: pam_unix(su:session): session opened for user root(uid=0) by carol(uid=1001)",
]


def append(path: Path, lines):
    with open(path, "a") as f:
        f.writelines(line + "\n" for line in lines)


def local(ev) -> time.struct_time:
    return time.localtime(parse_time(ev["event"]["start"]) / 1e9)


def test_auth_lines_decode_into_authentication_events():
    evs = [decode_line(line) for line in LINES]
    assert evs[0] is None and evs[7] is None  # cron's and sudo's PAM session lines
    ok = evs[1]
    assert ok["event"] == {"kind": "event", "category": ["authentication"], "type": ["start"], "action": "ssh-login",
                           "dataset": "host.logins", "module": "authlog", "outcome": "success",
                           "original": LINES[1], "start": ok["event"]["start"]}
    assert local(ok)[1:6] == (3, 3, 10, 15, 1)  # no year or zone in the line: local time, this year
    assert ok["user"] == {"name": "alice"} and ok["source"] == {"ip": "192.0.2.10", "port": 52144}
    assert ok["process"] == {"name": "sshd", "pid": 20345} and ok["auth"] == {"method": "password"}
    assert evs[2]["event"]["action"] == "ssh-invalid-user" and evs[2]["event"]["outcome"] == "failure"
    assert evs[3]["event"]["outcome"] == "failure" and evs[3]["user"] == {"name": "admin"}
    assert evs[3]["auth"] == {"method": "password", "invalid_user": True}
    assert evs[4]["user"] == {"name": "root"} and evs[4]["source"]["port"] == 40024
    assert evs[5]["source"]["ip"] == "2001:db8::5" and evs[5]["auth"]["method"] == "publickey"
    sudo = evs[6]
    assert sudo["event"]["action"] == "sudo" and sudo["event"]["outcome"] == "success"
    assert sudo["user"] == {"name": "alice", "effective": {"name": "root"}}
    assert sudo["sudo"] == {"command": "/usr/bin/apt update", "tty": "pts/0", "working_directory": "/home/alice"}
    assert sudo["process"] == {"name": "sudo"}
    assert evs[8]["event"]["outcome"] == "failure" and evs[8]["event"]["reason"] == "3 incorrect password attempts"
    assert evs[8]["sudo"]["command"] == "/usr/bin/cat /etc/shadow"
    assert evs[9]["event"]["reason"] == "user NOT in sudoers" and evs[9]["sudo"]["command"] == "/bin/sh -c id ; ls"

    carol, su = (decode_line(line) for line in DEBIAN12)
    assert carol["event"]["start"] == "2024-03-03T09:17:00.123456000Z"
    assert su["event"]["action"] == "su" and su["user"] == {"name": "carol", "effective": {"name": "root"}}


def test_auth_log_is_followed_across_rotation(tmp_path):
    log = tmp_path / "auth.log"
    append(log, LINES[:3])  # history before the sensor started: not replayed
    src = LoginInventory(interval=60, feed=FileFollower(str(log))).start()
    src.poll()
    assert [e for e in src.poll() if e["event"]["dataset"] == "host.logins" and "auth" in e] == []

    append(log, [LINES[4]])
    with open(log, "a") as f:
        f.write(LINES[6][:30])  # syslog's write of a line caught halfway
    [ev] = src.poll()
    assert ev["user"] == {"name": "root"} and ev["event"]["outcome"] == "failure"
    with open(log, "a") as f:
        f.write(LINES[6][30:] + "\n")
    [ev] = src.poll()
    assert ev["event"]["action"] == "sudo" and ev["event"]["original"] == LINES[6]

    # logrotate's rename and create: a last line reaches the old file before syslog reopens
    log.rename(tmp_path / "auth.log.1")
    append(tmp_path / "auth.log.1", [LINES[1]])
    assert [e["user"]["name"] for e in src.poll()] == ["alice"]
    append(log, [LINES[5], DEBIAN12[0]])
    assert [e["user"]["name"] for e in src.poll()] == ["bob", "carol"]
    assert src.feed.rotations == 1

    # copytruncate: the same file, emptied, then written from the start
    with open(log, "r+") as f:
        f.truncate(0)
    append(log, [LINES[8]])
    [ev] = src.poll()
    assert ev["user"]["name"] == "bob" and ev["event"]["outcome"] == "failure" and src.feed.rotations == 2
    assert src.poll() == []
    src.close()


def test_journal_entries_decode_like_the_file():
    """Entries as `journalctl -o json` prints them (every value a string; a non-UTF-8 MESSAGE
    as an array of bytes)."""
    entry = {"__REALTIME_TIMESTAMP": "1709457301123456", "_HOSTNAME": "web1", "SYSLOG_FACILITY": "4",
             "SYSLOG_IDENTIFIER": "sshd", "_PID": "20345", "_COMM": "sshd", "PRIORITY": "6",
             "MESSAGE": "Accepted password for alice from 192.0.2.10 port 52144 ssh2", "_UID": "0"}
    ev = decode_journal(entry)
    assert ev["event"]["action"] == "ssh-login" and ev["event"]["outcome"] == "success"
    assert ev["event"]["start"] == rfc3339(1709457301123456000)
    assert ev["source"] == {"ip": "192.0.2.10", "port": 52144} and ev["process"] == {"name": "sshd", "pid": 20345}
    sudo = dict(entry, SYSLOG_IDENTIFIER="sudo", _COMM="sudo", _PID="7",
                MESSAGE=list(b"  alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/\xff"))
    ev = decode_journal(sudo)
    assert ev["sudo"]["command"] == "/usr/bin/\ufffd" and ev["user"]["effective"] == {"name": "root"}
    assert decode_journal(dict(entry, MESSAGE="Connection closed by 192.0.2.10 port 52144")) is None


def test_sessions_snapshot_matches_who():
    ours = LoginInventory(interval=60, feed=FileFollower("/nonexistent")).start().poll()
    who = subprocess.run(["who"], capture_output=True, text=True, check=True).stdout.split("\n")
    theirs = sorted((line.split()[0], line.split()[1]) for line in who if line.strip())
    assert sorted((e["user"]["name"], e["session"]["terminal"]) for e in ours) == theirs
    assert all(e["event"]["category"] == ["session"] and e["event"]["action"] == "snapshot" for e in ours)


UTMP = "[7] [{pid:05d}] [ts/9] [alice   ] [pts/9       ] [203.0.113.7         ] [203.0.113.7    ] [{when}]\n"


@pytest.fixture
def utmp():
    """A utmp of our own, written by util-linux's utmpdump, where this host has none (a
    container); removed at teardown. A host with real sessions is not touched."""
    path = Path("/run/utmp")
    if path.exists():
        pytest.skip("this host has a utmp of its own: not ours to write")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_utmp(path: Path, text: str):
    subprocess.run(["utmpdump", "-r", "-o", str(path)], input=text, text=True, check=True, capture_output=True)


def test_login_and_logout_from_utmp(utmp):
    write_utmp(utmp, "")
    src = LoginInventory(interval=0.01, feed=FileFollower("/nonexistent")).start()
    assert src.poll() == [] and psutil.users() == []
    when = time.strftime("%Y-%m-%dT%H:%M:%S,000000+00:00", time.gmtime())
    leader = os.getpid()  # `who` lists a session only while its leader lives
    write_utmp(utmp, UTMP.format(pid=leader, when=when))
    assert "alice    pts/9" in subprocess.run(["who"], capture_output=True, text=True).stdout
    time.sleep(0.02)
    [ev] = src.poll()
    assert ev["event"]["action"] == "login" and ev["event"]["type"] == ["start"]
    assert ev["user"] == {"name": "alice"} and ev["process"] == {"pid": leader}
    assert ev["source"] == {"ip": "203.0.113.7"} and ev["session"]["terminal"] == "pts/9"
    assert abs(parse_time(ev["session"]["start"]) - time.time_ns()) < 5e9
    write_utmp(utmp, UTMP.format(pid=leader, when=when).replace("[7]", "[8]", 1))  # DEAD_PROCESS
    time.sleep(0.02)
    [ev] = src.poll()
    assert ev["event"]["action"] == "logout" and ev["event"]["type"] == ["end"] and ev["user"]["name"] == "alice"


def test_windows_security_records_decode_into_the_same_schema():
    """Recorded 4624/4625/4672 (Security) and 7045 (System) records, with the EventData fields
    those events carry."""
    records = json.loads((DATA / "windows_events.json").read_text())
    evs = {r["EventRecordID"]: decode(r) for r in records}
    logon = evs[229970]
    assert logon["event"] == {"kind": "event", "category": ["authentication"], "type": ["start"], "action": "logon",
                              "dataset": "host.logins", "module": "winlog", "outcome": "success", "code": "4624",
                              "start": "2024-03-03T10:15:01.123456700Z"}
    assert logon["user"] == {"name": "alice", "domain": "CONTOSO", "id": "S-1-5-21-3457937927-2839227994-823803824-1104"}
    assert logon["source"] == {"ip": "192.0.2.10", "port": 52144, "domain": "WKS-17"}
    assert logon["auth"] == {"logon_type": "remote_interactive", "logon_id": "0x8dcdc", "package": "Negotiate",
                             "logon_process": "User32"}
    assert logon["process"] == {"pid": 0x2c4, "executable": r"C:\Windows\System32\svchost.exe", "name": "svchost.exe"}
    failed = evs[229977]
    assert failed["event"]["outcome"] == "failure" and failed["event"]["reason"] == "wrong password"
    assert failed["user"]["name"] == "Administrator" and "id" not in failed["user"]  # S-1-0-0: the null SID
    assert failed["source"] == {"ip": "198.51.100.23", "port": 40022, "domain": "KALI"}
    assert failed["auth"]["logon_type"] == "network" and "process" not in failed  # pid 0x0, name "-"
    priv = evs[229971]
    assert priv["event"]["action"] == "special-privileges-assigned" and priv["event"]["category"] == ["iam"]
    assert priv["auth"]["privileges"] == ["SeSecurityPrivilege", "SeBackupPrivilege", "SeDebugPrivilege"]
    svc = evs[1520]
    assert svc["event"]["dataset"] == "host.services" and svc["event"]["action"] == "added"
    assert svc["event"]["code"] == "7045" and svc["event"]["type"] == ["creation"]
    assert svc["service"] == {"name": "PSEXESVC", "type": "windows", "start_mode": "manual", "kind": "user mode service"}
    assert svc["process"] == {"executable": r"%SystemRoot%\PSEXESVC.exe", "command_line": r"%SystemRoot%\PSEXESVC.exe"}
    assert svc["user"] == {"name": "LocalSystem"}


def test_windows_event_xml_parses_to_the_recorded_shape():
    xml = (DATA / "windows_4625.xml").read_text()
    rec = parse_event_xml(xml)
    assert rec["EventID"] == 4625 and rec["Channel"] == "Security" and rec["EventRecordID"] == 229977
    assert rec["EventData"]["TargetUserName"] == "Administrator" and rec["EventData"]["SubStatus"] == "0xc000006a"
    recorded = next(r for r in json.loads((DATA / "windows_events.json").read_text()) if r["EventRecordID"] == 229977)
    assert rec == recorded


def test_a_session_shorter_than_a_look_is_seen_in_wtmp(tmp_path):
    """wtmp keeps what utmp forgets: a login and its logout between two polls, written in the real
    format by util-linux's utmpdump and appended as login(1) and sshd append them."""
    wtmp = tmp_path / "wtmp"
    wtmp.write_bytes(b"")
    src = LoginInventory(interval=3600, feed=FileFollower("/nonexistent"), wtmp=str(wtmp)).start()
    src.poll()  # the utmp snapshot, whatever this host has
    when = time.strftime("%Y-%m-%dT%H:%M:%S,000000+00:00", time.gmtime())
    records = tmp_path / "records"
    write_utmp(records, UTMP.format(pid=4242, when=when) +
               UTMP.format(pid=4242, when=when).replace("[7]", "[8]", 1).replace("alice   ", "        "))
    with open(wtmp, "ab") as f:
        f.write(records.read_bytes())
    login, logout = src.poll()
    assert login["event"]["action"] == "login" and logout["event"]["action"] == "logout"
    assert login["user"] == {"name": "alice"} and login["source"] == {"ip": "203.0.113.7"}
    assert logout["user"] == {"name": "alice"}  # DEAD_PROCESS has no user: taken from its login
    assert login["session"]["terminal"] == logout["session"]["terminal"] == "pts/9"
    assert abs(parse_time(login["session"]["start"]) - time.time_ns()) < 5e9
    assert src.poll() == []  # nothing read twice
    assert src.stats()["sessions_from"] == "wtmp"
