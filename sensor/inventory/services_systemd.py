"""systemd backend of the service inventory: org.freedesktop.systemd1 over D-Bus (jeepney).

The manager is asked once for every *.service unit (ListUnits, ListUnitFiles, Properties.GetAll);
after Subscribe it signals each change (PropertiesChanged on the unit, UnitNew, UnitRemoved,
UnitFilesChanged), and only the units named there are read again. The D-Bus socket is the fd
the pipeline waits on.
"""
from __future__ import annotations

import logging
from collections import deque

from jeepney import DBusAddress, MatchRule, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import Proxy, open_dbus_connection
from jeepney.low_level import HeaderFields, MessageType
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from ..schema import rfc3339

log = logging.getLogger("sensor.inventory")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
UNIT_PATHS = "/org/freedesktop/systemd1/unit"
MANAGER = DBusAddress("/org/freedesktop/systemd1", SYSTEMD, MANAGER_IFACE)
UNKNOWN = (1 << 64) - 1  # systemd's "not available" for MemoryCurrent, CPUUsageNSec

# systemd's ActiveState in the inventory's shared vocabulary (SubState keeps the detail)
STATES = {"active": "running", "reloading": "reloading", "inactive": "stopped", "failed": "failed",
          "activating": "starting", "deactivating": "stopping", "maintenance": "stopped",
          "refreshing": "reloading"}


def _props(reply_body) -> dict:
    return {k: v[1] for k, v in reply_body[0].items()}  # a{sv}: drop the variants' signatures


def decode(unit: dict, service: dict) -> dict:
    """Unit and Service properties (as GetAll returns them) as one inventory record."""
    pid = service.get("MainPID") or None
    execs = service.get("ExecStart") or []  # a(sasbttttuii): path, argv, ignore errors, times, pid, status
    started = service.get("ExecMainStartTimestamp") or unit.get("ActiveEnterTimestamp") or 0
    mem, cpu = service.get("MemoryCurrent", UNKNOWN), service.get("CPUUsageNSec", UNKNOWN)
    active = unit.get("ActiveState", "")
    return {
        "name": unit["Id"], "type": "systemd",
        "state": STATES.get(active, active or "unknown"), "sub_state": unit.get("SubState") or None,
        "start_mode": unit.get("UnitFileState") or None, "description": unit.get("Description") or None,
        "unit_file": unit.get("FragmentPath") or None,
        "pid": pid, "executable": execs[0][0] if execs else None,
        "command_line": " ".join(execs[0][1]) if execs and execs[0][1] else None,
        "user": service.get("User") or "root",  # no User=: the system manager's own
        "memory_bytes": mem if mem != UNKNOWN else None,
        "cpu_seconds": round(cpu / 1e9, 3) if cpu != UNKNOWN else None,
        "start": rfc3339(started * 1000) if started and pid else None,
    }


def unloaded(name: str, path: str | None, file_state: str) -> dict:
    """A service installed on disk that the manager has not loaded: it is not running."""
    return {"name": name, "type": "systemd", "state": "stopped", "sub_state": "dead",
            "start_mode": file_state, "unit_file": path}


class SystemdBackend:
    type = "systemd"

    def __init__(self, bus: str = "SYSTEM", timeout: float = 5.0):
        self.timeout = timeout
        self.conn = open_dbus_connection(bus)
        self._signals: deque = deque()
        self._filter = self.conn.filter(MatchRule(type="signal"), queue=self._signals)
        self.paths: dict[str, str] = {}  # unit object path -> name
        self.files: dict[str, str] = {}  # name -> unit file, of installed services
        self.names: set[str] = set()  # services known after the last call
        try:
            bus_proxy = Proxy(message_bus, self.conn, timeout=timeout)
            bus_proxy.AddMatch(MatchRule(type="signal", sender=SYSTEMD, interface=PROPS_IFACE,
                                         member="PropertiesChanged", path_namespace=UNIT_PATHS))
            bus_proxy.AddMatch(MatchRule(type="signal", sender=SYSTEMD, interface=MANAGER_IFACE))
            self._call(MANAGER, "Subscribe")  # without it the manager emits no signals
        except BaseException:
            self.conn.close()
            raise

    def fileno(self) -> int:
        return self.conn.sock.fileno()

    def _call(self, addr: DBusAddress, method: str, signature: str | None = None, body=()):
        msg = new_method_call(addr, method, signature, body)
        return unwrap_msg(self.conn.send_and_get_reply(msg, timeout=self.timeout))

    def _unit(self, path: str) -> dict | None:
        addr = DBusAddress(path, SYSTEMD, PROPS_IFACE)
        try:
            unit = _props(self._call(addr, "GetAll", "s", (UNIT_IFACE,)))
            service = _props(self._call(addr, "GetAll", "s", (SERVICE_IFACE,)))
        except DBusErrorResponse:
            return None  # unloaded between the signal and now
        self.paths[path] = unit["Id"]
        return decode(unit, service)

    def snapshot(self) -> dict[str, dict]:
        out = {}
        files = {}
        for path, state in self._call(MANAGER, "ListUnitFiles")[0]:
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".service") and not name.endswith("@.service"):  # templates never run
                files[name] = (path, state)
        self.files = {name: path for name, (path, _) in files.items()}
        for unit in self._call(MANAGER, "ListUnits")[0]:
            name, path = unit[0], unit[6]  # a(ssssssouso): name, ..., object path, ...
            if name.endswith(".service"):
                rec = self._unit(path)
                if rec is not None:
                    out[name] = rec
        for name, (path, state) in files.items():
            out.setdefault(name, unloaded(name, path, state))
        self.names = set(out)
        return out

    def changes(self) -> dict[str, dict | None]:
        """The services the manager signalled since the last call, read again (None: gone)."""
        try:
            while True:
                self.conn.recv_messages(timeout=0)
        except TimeoutError:
            pass
        dirty, gone, rescan = set(), set(), False
        while self._signals:
            msg = self._signals.popleft()
            if msg.header.message_type != MessageType.signal:
                continue
            member, body = msg.header.fields.get(HeaderFields.member), msg.body
            if member == "PropertiesChanged" and body and body[0] in (UNIT_IFACE, SERVICE_IFACE):
                dirty.add(msg.header.fields.get(HeaderFields.path))
            elif member == "UnitNew" and body[0].endswith(".service"):
                dirty.add(body[1])
                gone.discard(body[0])
            elif member == "UnitRemoved" and body[0].endswith(".service"):
                dirty.discard(body[1])
                self.paths.pop(body[1], None)
                gone.add(body[0])
            elif member in ("UnitFilesChanged", "Reloading"):
                rescan = True
        if rescan:
            before = self.names
            out = self.snapshot()
            return {**out, **{name: None for name in before - out.keys()}}
        out: dict[str, dict | None] = {}
        for name in gone:
            out[name] = self._unloaded(name)
        for path in dirty:
            rec = self._unit(path)
            if rec is not None:
                out[rec["name"]] = rec
        self.names |= {n for n, r in out.items() if r is not None}
        self.names -= {n for n, r in out.items() if r is None}
        return out

    def _unloaded(self, name: str) -> dict | None:
        """UnitRemoved only means unloaded (systemd drops idle units): gone only if its file is."""
        try:
            state = self._call(MANAGER, "GetUnitFileState", "s", (name,))[0]
        except DBusErrorResponse:
            return None
        return unloaded(name, self.files.get(name), state)

    def close(self):
        self._filter.close()
        self.conn.close()
