"""Linux authentication records: sshd and sudo/su lines from the syslog auth file (followed across
rotation) or from the journal, decoded into `host.logins` events."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

from ..schema import parse_time, rfc3339
from .events import inventory_event, without_none

# "Mar  3 10:15:01 host sshd[812]: ..." (RFC 3164) or "2024-03-03T10:15:01.123456+01:00 host ..."
_SYSLOG = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\S+|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
                     r"(?P<ident>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
_SSH = re.compile(r"^(?P<result>Accepted|Failed) (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*?) "
                  r"from (?P<ip>\S+) port (?P<port>\d+)")
_SSH_INVALID = re.compile(r"^Invalid user (?P<user>.*?) from (?P<ip>\S+) port (?P<port>\d+)")
# "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id" and, on refusal,
# "alice : 3 incorrect password attempts ; TTY=..." or "alice : user NOT in sudoers ; TTY=..."
_SUDO = re.compile(r"^\s*(?P<user>\S+) : (?:(?P<reason>[^;=]+?) ; )?(?P<rest>(?:[A-Z]+=.*))$")
_SU = re.compile(r"^pam_unix\(su(?:-l)?:session\): session opened for user (?P<target>[^(\s]+)\S* by "
                 r"(?P<user>[^(\s]*)")


def _syslog_time(ts: str, now: float | None = None) -> int:
    """ns since the epoch; RFC 3164 stamps have no year or zone: local time, this year (last
    year when that would be in the future, e.g. a December line read in January)."""
    if ts[0].isdigit():
        return parse_time(ts)
    now = time.time() if now is None else now
    year = time.localtime(now).tm_year
    t = time.mktime(time.strptime(f"{year} {ts}", "%Y %b %d %H:%M:%S"))
    if t > now + 86400:
        t = time.mktime(time.strptime(f"{year - 1} {ts}", "%Y %b %d %H:%M:%S"))
    return int(t) * 1_000_000_000


def decode_message(ident: str, pid: int | None, msg: str, ts_ns: int | None, original: str) -> dict | None:
    """One sshd/sudo/su message as an event, or None when it is not one we report."""
    fields: dict = {"process": {"name": ident, "pid": pid}}
    if ident == "sshd":
        m = _SSH.match(msg)
        if m:
            ok = m["result"] == "Accepted"
            fields.update(action="ssh-login", outcome="success" if ok else "failure",
                          user={"name": m["user"]}, source={"ip": m["ip"], "port": int(m["port"])},
                          auth={"method": m["method"], "invalid_user": bool(m["invalid"]) or None})
        elif (m := _SSH_INVALID.match(msg)):
            fields.update(action="ssh-invalid-user", outcome="failure", user={"name": m["user"]},
                          source={"ip": m["ip"], "port": int(m["port"])}, auth={"invalid_user": True})
        else:
            return None
    elif ident == "sudo":
        m = _SUDO.match(msg)
        if not m:
            return None
        head, has_command, command = m["rest"].partition("COMMAND=")  # last: it may hold " ; "
        kv = dict(p.split("=", 1) for p in head.split(" ; ") if "=" in p)
        fields.update(action="sudo", outcome="failure" if m["reason"] else "success",
                      user={"name": m["user"], "effective": {"name": kv.get("USER")}},
                      sudo={"command": command if has_command else None, "tty": kv.get("TTY"),
                            "working_directory": kv.get("PWD")}, reason=m["reason"])
    elif ident == "su":
        m = _SU.match(msg)
        if not m:
            return None
        fields.update(action="su", outcome="success", user={"name": m["user"] or None,
                                                             "effective": {"name": m["target"]}})
    else:
        return None
    action, outcome, reason = fields.pop("action"), fields.pop("outcome"), fields.pop("reason", None)
    ev = inventory_event("host.logins", action, ["authentication"], ["start"] if action != "sudo" else ["info"],
                         module="authlog", **fields)
    ev["event"].update(outcome=outcome, reason=reason, original=original,
                       start=rfc3339(ts_ns) if ts_ns else None)
    return without_none(ev)


def decode_line(line: str, now: float | None = None) -> dict | None:
    """One line of /var/log/auth.log (or secure)."""
    m = _SYSLOG.match(line.rstrip("\n"))
    if not m:
        return None
    try:
        ts = _syslog_time(m["ts"], now)
    except ValueError:
        ts = None
    return decode_message(m["ident"], int(m["pid"]) if m["pid"] else None, m["msg"], ts, line.rstrip("\n"))


def decode_journal(entry: dict) -> dict | None:
    """One `journalctl -o json` entry: the same messages, with the journal's own fields."""
    msg = entry.get("MESSAGE")
    if isinstance(msg, list):  # journald's way of passing a non-UTF-8 message: a byte array
        msg = bytes(msg).decode("utf-8", "replace")
    ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM")
    if not msg or not ident:
        return None
    pid = entry.get("SYSLOG_PID") or entry.get("_PID")
    ts = int(entry["__REALTIME_TIMESTAMP"]) * 1000 if entry.get("__REALTIME_TIMESTAMP") else None
    return decode_message(ident, int(pid) if pid else None, msg, ts, msg)


class FileFollower:
    """`tail -F` of one file: new complete lines, across rotation by rename (a new inode at the
    path: the old file is read to its end first) and by copytruncate (the file got shorter)."""

    def __init__(self, path: str, from_start: bool = False):
        self.path = path
        self.rotations = 0
        self._f = None
        self._ino = None
        self._partial = b""
        self._open(from_start)

    def _open(self, from_start: bool) -> bool:
        try:
            f = open(self.path, "rb")
        except OSError:
            return False
        if not from_start:
            f.seek(0, os.SEEK_END)
        self._f, self._ino, self._partial = f, os.fstat(f.fileno()).st_ino, b""
        return True

    def lines(self) -> list[str]:
        out = self._read()
        try:
            st = os.stat(self.path)
        except OSError:
            return out  # rotated away and not yet recreated: keep the old file until it is
        if self._f is None or st.st_ino != self._ino:
            if self._f is not None:
                self._f.close()
                self.rotations += 1
            if self._open(from_start=True):
                out += self._read()
        elif st.st_size < self._f.tell():  # truncated in place
            self.rotations += 1
            self._f.seek(0)
            self._partial = b""
            out += self._read()
        return out

    def _read(self) -> list[str]:
        if self._f is None:
            return []
        data = self._partial + self._f.read()
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


class JournalFollower:
    """`journalctl -o json --follow` of the auth facilities, from now on; its pipe is the fd."""

    def __init__(self, journalctl: str = "journalctl"):
        self.proc = subprocess.Popen([journalctl, "-o", "json", "--follow", "--lines=0",
                                      "SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._partial = b""

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def entries(self) -> list[dict]:
        try:
            data = self.proc.stdout.read() or b""
        except BlockingIOError:
            data = b""
        *complete, self._partial = (self._partial + data).split(b"\n")
        out = []
        for line in complete:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
