"""Service inventory (host.services): the systemd backend against a real D-Bus daemon, the SysV
backend against real init scripts and processes, the Windows decoding on recorded values."""
from __future__ import annotations

import json
import os
import select
import subprocess
import threading
from pathlib import Path

import pytest
from jeepney import DBusAddress, new_error, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import Proxy, open_dbus_connection
from jeepney.low_level import HeaderFields, MessageType

from sensor.inventory import ServiceInventory
from sensor.inventory.services_sysv import SysvBackend
from sensor.windows.services import decode, executable
from sensor.schema import rfc3339

from conftest import wait_for

DATA = Path(__file__).parent / "data"
MANAGER_PATH = "/org/freedesktop/systemd1"


def unit_path(name: str) -> str:
    """systemd's object path of a unit: every byte but [A-Za-z0-9] escaped as _XX."""
    return MANAGER_PATH + "/unit/" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


@pytest.fixture
def bus(tmp_path):
    """A private dbus-daemon on a socket in tmp_path, stopped at teardown."""
    sock = tmp_path / "bus"
    proc = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                             f"--address=unix:path={sock}"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # (it warns it may not raise its fd limit)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:path="), address
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


class FakeSystemd:
    """org.freedesktop.systemd1's Manager and units, answered by jeepney on a real bus.

    systemd cannot run as PID 1 in this container (nor be started by a test), so the manager's
    side of the protocol is played here: ListUnits, ListUnitFiles, GetUnitFileState, Subscribe,
    Properties.GetAll, and the signals systemd sends (PropertiesChanged, UnitNew, UnitRemoved).
    The sensor's D-Bus client runs unchanged, over a real socket, through a real dbus-daemon
    that routes the signals by its match rules.
    """

    def __init__(self, address: str):
        self.conn = open_dbus_connection(address)
        assert Proxy(message_bus, self.conn).RequestName("org.freedesktop.systemd1") == (1,)
        self.units: dict[str, dict] = {}  # name -> {"unit": props, "service": props}
        self.files: dict[str, tuple[str, str]] = {}  # name -> (path, state)
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name, active="active", sub="running", pid=0, exe=None, argv=(), user="", state="enabled",
            memory=(1 << 64) - 1, cpu_ns=(1 << 64) - 1, started_us=0, description=""):
        path = f"/lib/systemd/system/{name}"
        self.files[name] = (path, state)
        self.units[name] = {
            "unit": {"Id": ("s", name), "Description": ("s", description), "LoadState": ("s", "loaded"),
                     "ActiveState": ("s", active), "SubState": ("s", sub), "UnitFileState": ("s", state),
                     "FragmentPath": ("s", path), "ActiveEnterTimestamp": ("t", started_us)},
            "service": {"MainPID": ("u", pid), "User": ("s", user), "Type": ("s", "simple"),
                        "ExecStart": ("a(sasbttttuii)", [(exe, list(argv), False, 0, 0, 0, 0, 0, 0, 0)] if exe else []),
                        "MemoryCurrent": ("t", memory), "CPUUsageNSec": ("t", cpu_ns),
                        "ExecMainStartTimestamp": ("t", started_us)}}

    def _emit(self, path, iface, member, sig, body):
        with self._lock:
            self.conn.send(new_signal(DBusAddress(path, interface=iface), member, sig, body))

    def set_state(self, name, active, sub, pid):
        """As systemd does it: one PropertiesChanged per interface whose properties moved."""
        u = self.units[name]
        u["unit"].update(ActiveState=("s", active), SubState=("s", sub))
        u["service"]["MainPID"] = ("u", pid)
        self._emit(unit_path(name), "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                   ("org.freedesktop.systemd1.Unit", {"ActiveState": ("s", active), "SubState": ("s", sub)}, []))
        self._emit(unit_path(name), "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                   ("org.freedesktop.systemd1.Service", {"MainPID": ("u", pid)}, []))

    def unit_new(self, name, **kw):
        self.add(name, **kw)
        self._emit(MANAGER_PATH, "org.freedesktop.systemd1.Manager", "UnitNew", "so", (name, unit_path(name)))

    def unit_removed(self, name, delete_file: bool):
        del self.units[name]
        if delete_file:
            del self.files[name]
        self._emit(MANAGER_PATH, "org.freedesktop.systemd1.Manager", "UnitRemoved", "so", (name, unit_path(name)))

    def _serve(self):
        while not self._stop.is_set():
            try:
                msg = self.conn.receive(timeout=0.05)
            except TimeoutError:
                continue
            except OSError:
                return
            if msg.header.message_type == MessageType.method_call:
                reply = self._answer(msg)
                with self._lock:
                    self.conn.send(reply)

    def _answer(self, msg):
        member, path = msg.header.fields[HeaderFields.member], msg.header.fields[HeaderFields.path]
        if member == "Subscribe":
            self.subscribed.set()
            return new_method_return(msg)
        if member == "ListUnits":
            units = [(n, "", "loaded", u["unit"]["ActiveState"][1], u["unit"]["SubState"][1], "", unit_path(n),
                      0, "", "/") for n, u in self.units.items()]
            units.append(("dev-sda.device", "disk", "loaded", "active", "plugged", "", unit_path("dev-sda.device"),
                          0, "", "/"))  # not a service: left out
            return new_method_return(msg, "a(ssssssouso)", (units,))
        if member == "ListUnitFiles":
            files = [f for f in self.files.values()] + [("/lib/systemd/system/getty@.service", "enabled")]
            return new_method_return(msg, "a(ss)", (files,))
        if member == "GetUnitFileState":
            name = msg.body[0]
            if name not in self.files:
                return new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", "s", (f"No such file {name}",))
            return new_method_return(msg, "s", (self.files[name][1],))
        if member == "GetAll":
            name = next((n for n in self.units if unit_path(n) == path), None)
            if name is None:
                return new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "s", (path,))
            which = "unit" if msg.body[0].endswith(".Unit") else "service"
            return new_method_return(msg, "a{sv}", (self.units[name][which],))
        return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (member,))

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


@pytest.fixture
def systemd(bus):
    fake = FakeSystemd(bus)
    yield fake
    fake.close()


def poll_until(inv, n: int, timeout=10.0) -> list[dict]:
    got = []

    def enough():
        got.extend(inv.poll())
        return len(got) >= n

    wait_for(enough, timeout=timeout, what=f"{n} service events")
    return got


def test_systemd_snapshot_and_signalled_changes(bus, systemd):
    systemd.add("ssh.service", pid=812, exe="/usr/sbin/sshd", argv=["/usr/sbin/sshd", "-D"], memory=5 << 20,
                cpu_ns=1_500_000_000, started_us=1_700_000_000_000_000, description="OpenBSD Secure Shell server")
    systemd.add("cron.service", active="inactive", sub="dead", state="disabled", description="cron")
    systemd.files["old.service"] = ("/etc/systemd/system/old.service", "disabled")  # installed, never loaded
    inv = ServiceInventory(interval=60, backend="systemd", bus=bus).start()
    try:
        assert inv.module == "systemd" and systemd.subscribed.is_set()
        snap = {e["service"]["name"]: e for e in inv.poll()}
        assert set(snap) == {"ssh.service", "cron.service", "old.service"}  # no device, no template
        ssh = snap["ssh.service"]
        assert ssh["event"] == {"kind": "state", "category": ["configuration"], "type": ["info"],
                                "action": "snapshot", "dataset": "host.services", "module": "systemd"}
        assert ssh["service"] == {"name": "ssh.service", "type": "systemd", "state": "running", "sub_state": "running",
                                  "start_mode": "enabled", "description": "OpenBSD Secure Shell server",
                                  "unit_file": "/lib/systemd/system/ssh.service", "memory_bytes": 5 << 20,
                                  "cpu_seconds": 1.5, "start": rfc3339(1_700_000_000_000_000_000)}
        assert ssh["process"] == {"pid": 812, "executable": "/usr/sbin/sshd", "command_line": "/usr/sbin/sshd -D"}
        assert ssh["user"] == {"name": "root"}
        assert snap["cron.service"]["service"]["state"] == "stopped"
        assert "process" not in snap["cron.service"] and "memory_bytes" not in snap["cron.service"]["service"]
        assert snap["old.service"]["service"] == {"name": "old.service", "type": "systemd", "state": "stopped",
                                                  "sub_state": "dead", "start_mode": "disabled",
                                                  "unit_file": "/etc/systemd/system/old.service"}
        assert inv.poll() == []

        # the D-Bus socket is the fd the pipeline waits on: readable once systemd signals
        systemd.set_state("cron.service", "active", "running", 4242)
        assert select.select([inv.fileno()], [], [], 5)[0] == [inv.fileno()]
        [ev] = poll_until(inv, 1)
        assert ev["event"]["action"] == "state-change" and ev["event"]["type"] == ["change"]
        assert ev["service"]["state"] == "running" and ev["process"]["pid"] == 4242
        assert ev["service"]["previous"] == {"state": "stopped", "sub_state": "dead", "pid": None}
        assert inv.poll() == []  # two signals (Unit and Service properties), one event

        systemd.unit_new("nginx.service", pid=900, exe="/usr/sbin/nginx")
        [ev] = poll_until(inv, 1)
        assert ev["event"]["action"] == "added" and ev["event"]["type"] == ["creation"]
        assert ev["service"]["name"] == "nginx.service" and ev["process"]["executable"] == "/usr/sbin/nginx"

        # unloaded (systemd collects idle units) but still installed: stopped, not removed
        systemd.unit_removed("cron.service", delete_file=False)
        systemd.unit_removed("nginx.service", delete_file=True)
        events = {e["service"]["name"]: e for e in poll_until(inv, 2)}
        assert events["nginx.service"]["event"]["action"] == "removed"
        assert events["nginx.service"]["event"]["type"] == ["deletion"]
        assert events["cron.service"]["event"]["action"] == "state-change"
        assert events["cron.service"]["service"]["state"] == "stopped"
        assert events["cron.service"]["service"]["previous"]["state"] == "running"
        assert set(inv.known) == {"ssh.service", "cron.service", "old.service"}
    finally:
        inv.close()


def test_auto_without_systemd_falls_back_to_sysv_and_says_so(tmp_path, caplog):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd is PID 1 here: auto picks it")
    inv = ServiceInventory(interval=60, init_dir=str(tmp_path)).start()
    assert inv.module == "sysv" and inv.fileno() is None
    assert "systemd is not PID 1" in caplog.text
    # asked for systemd where no system bus answers: still no crash
    inv = ServiceInventory(interval=60, backend="systemd", init_dir=str(tmp_path), bus=f"unix:path={tmp_path}/none").start()
    assert inv.module == "sysv" and "falling back to SysV" in caplog.text


INIT_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          demo
# Required-Start:    $remote_fs
# Default-Start:     2 3 4 5
# Short-Description: Demo daemon of the sensor's tests
### END INIT INFO
NAME=demo
DAEMON=/bin/sleep
PIDFILE={run}/$NAME.pid
case "$1" in
  start) start-stop-daemon --start --background --make-pidfile --pidfile $PIDFILE --exec $DAEMON -- 300 ;;
  stop) start-stop-daemon --stop --quiet --oknodo --retry 5 --remove-pidfile --pidfile $PIDFILE ;;
  status) start-stop-daemon --status --pidfile $PIDFILE ;;
esac
"""


@pytest.fixture
def initd(tmp_path):
    """etc/init.d with a real daemon script (linked into rc2.d) and a one-shot; the daemon is
    stopped, and killed if need be, at teardown."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    (etc / "init.d").mkdir(parents=True)
    (etc / "rc2.d").mkdir()
    run.mkdir()
    script = etc / "init.d" / "demo"
    script.write_text(INIT_SCRIPT.replace("{run}", str(run)))
    script.chmod(0o755)
    (etc / "rc2.d" / "S01demo").symlink_to("../init.d/demo")
    oneshot = etc / "init.d" / "oneshot"
    oneshot.write_text("#!/bin/sh\n### BEGIN INIT INFO\n# Short-Description: does a thing once\n### END INIT INFO\ntrue\n")
    oneshot.chmod(0o755)
    (etc / "init.d" / "README").write_text("not a script\n")
    yield script, run / "demo.pid"
    if script.exists():
        subprocess.run([str(script), "stop"], capture_output=True)
    pid = (run / "demo.pid").read_text().strip() if (run / "demo.pid").exists() else ""
    if pid:
        subprocess.run(["kill", "-9", pid], capture_output=True)


def test_sysv_init_script_states_follow_a_real_daemon(initd):
    script, pidfile = initd
    inv = ServiceInventory(interval=0.05, backend="sysv", init_dir=str(script.parent)).start()
    snap = {e["service"]["name"]: e for e in inv.poll()}
    assert set(snap) == {"demo", "oneshot"}
    assert snap["demo"]["service"] == {"name": "demo", "type": "sysv", "state": "stopped", "sub_state": "dead",
                                       "start_mode": "enabled", "description": "Demo daemon of the sensor's tests",
                                       "unit_file": str(script)}
    assert snap["oneshot"]["service"]["state"] == "unknown" and snap["oneshot"]["service"]["start_mode"] == "disabled"

    subprocess.run([str(script), "start"], check=True)
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pid file"))
    [ev] = poll_until(inv, 1)
    assert ev["event"]["action"] == "state-change"
    assert ev["service"]["state"] == "running" and ev["service"]["previous"]["state"] == "stopped"
    assert ev["process"]["pid"] == pid
    assert ev["process"]["executable"] == os.readlink(f"/proc/{pid}/exe")
    assert ev["process"]["command_line"] == open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
    assert ev["user"] == {"name": "root"} and ev["service"]["memory_bytes"] > 0
    # `status` as the script itself answers it agrees
    assert subprocess.run([str(script), "status"]).returncode == 0

    subprocess.run([str(script), "stop"], check=True)
    [ev] = poll_until(inv, 1)
    assert ev["service"]["state"] == "stopped"
    assert ev["service"]["previous"] == {"state": "running", "sub_state": "running", "pid": pid,
                                         "executable": os.path.realpath("/bin/sleep"),
                                         "command_line": "/bin/sleep 300", "user": "root"}
    assert subprocess.run([str(script), "status"]).returncode == 3  # LSB: not running
    inv.poll()
    assert inv.poll() == []

    script.unlink()
    [ev] = poll_until(inv, 1)
    assert ev["event"]["action"] == "removed" and ev["service"]["name"] == "demo"


def test_sysv_states_agree_with_service_status_all():
    """On this host's own /etc/init.d: where we say running or stopped, `service --status-all`
    (which runs each script's status action) says + or -."""
    out = subprocess.run(["service", "--status-all"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True).stdout  # ("[ ? ]" lines go to stderr)
    theirs = {line.split("]")[1].strip(): line.split("]")[0].strip(" [") for line in out.splitlines() if "]" in line}
    ours = SysvBackend("/etc/init.d").snapshot()
    assert set(ours) == set(theirs)
    for name, rec in ours.items():
        if rec["state"] in ("running", "stopped"):
            assert theirs[name] == ("+" if rec["state"] == "running" else "-"), name


def test_windows_services_decoded_from_recorded_as_dict():
    """Values as psutil's WindowsService.as_dict() returns them (keys binpath, description,
    display_name, name, pid, start_type, status, username)."""
    records = json.loads((DATA / "windows_services.json").read_text())
    assert all(set(r) == {"binpath", "description", "display_name", "name", "pid", "start_type", "status", "username"}
               for r in records)
    got = {r["name"]: decode(r) for r in records}
    assert got["Dnscache"] == {"name": "Dnscache", "type": "windows", "state": "running", "sub_state": "running",
                               "start_mode": "automatic", "display_name": "DNS Client",
                               "description": records[0]["description"], "pid": 1804,
                               "executable": r"C:\Windows\system32\svchost.exe",
                               "command_line": r"C:\Windows\system32\svchost.exe -k NetworkService -p",
                               "user": r"NT AUTHORITY\NetworkService"}
    assert got["ALG"]["state"] == "stopped" and got["ALG"]["pid"] is None and got["ALG"]["start_mode"] == "manual"
    assert got["VendorUpdate"]["executable"] == r"C:\Program Files (x86)\Vendor Tools\update svc.exe"
    assert got["Spooler"]["state"] == "starting" and got["Spooler"]["sub_state"] == "start_pending"
    assert got["wuauserv"]["start_mode"] == "disabled"
    assert executable(r"C:\Program Files\Foo\foo.exe /service") == r"C:\Program Files\Foo\foo.exe"
    assert executable(r"\SystemRoot\System32\drivers\x.sys") == r"\SystemRoot\System32\drivers\x.sys"

    from sensor.inventory.services import diff

    before = {r["name"]: decode(r) for r in records}
    after = dict(before, Spooler=dict(before["Spooler"], state="running", sub_state="running", pid=2210))
    [ev] = diff(before, after, "windows")
    assert ev["event"]["action"] == "state-change" and ev["event"]["module"] == "windows"
    assert ev["service"]["previous"] == {"state": "starting", "sub_state": "start_pending", "pid": None}
