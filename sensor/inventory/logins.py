"""Users and logins (`host.logins`): sessions from utmp (psutil.users) as a snapshot then login
and logout events, and authentication records (sshd, sudo, su; Windows logons) as they are logged."""
from __future__ import annotations

import ipaddress
import logging
import os

import psutil

from ..schema import rfc3339
from ..timersource import TimerSource
from .events import Interval, inventory_event, without_none

log = logging.getLogger("sensor.inventory")


def _source(host: str | None) -> dict:
    """utmp's host column: an address, a name, or a display (":0") for local X sessions."""
    if not host:
        return {}
    try:
        return {"ip": str(ipaddress.ip_address(host))}
    except ValueError:
        return {} if host.startswith(":") else {"domain": host}


def session_key(u) -> tuple:
    return u.name, u.terminal, u.host, u.started, u.pid


def session_event(action: str, u) -> dict:
    types = {"snapshot": ["info"], "login": ["start"], "logout": ["end"]}[action]
    ev = inventory_event("host.logins", action, ["session"], types, user={"name": u.name},
                         process={"pid": u.pid}, source=_source(u.host),
                         session={"terminal": u.terminal, "start": rfc3339(int(u.started * 1e9))})
    return without_none(ev)


class LoginInventory(TimerSource):
    name = "host.logins"

    def __init__(self, interval: float = 5.0, auth_log: str = "/var/log/auth.log", feed=None,
                 wtmp: str | None = None):
        self.interval = interval
        # with wtmp, logins and logouts come from its records (none missed between two looks);
        # without, from the difference between two looks at utmp
        self.wtmp = None
        if wtmp and os.path.exists(wtmp):
            from .wtmp import WtmpFollower

            self.wtmp = WtmpFollower(wtmp)
        self.auth_log = auth_log
        self.feed = feed
        self.sessions: dict[tuple, object] = {}
        self._pending: list[dict] = []
        self._timer: Interval | None = None

    def start(self):
        self.sessions = {session_key(u): u for u in psutil.users()}
        self._pending = [session_event("snapshot", u) for u in self.sessions.values()]
        if self.wtmp is not None:
            self.wtmp.start()
        if self.feed is None:
            from .. import backend  # journal or auth file; Windows: the event logs

            self.feed = backend.login_feed(self.auth_log)
        self._timer = Interval(self.interval)
        return self

    def fileno(self):
        return self.feed.fileno() if self.feed is not None and hasattr(self.feed, "fileno") else None

    def stats(self) -> dict:
        return {**super().stats(), "sessions": len(self.sessions),
                "feed": type(self.feed).__name__ if self.feed is not None else None,
                "sessions_from": "wtmp" if self.wtmp is not None else "utmp"}

    def poll(self) -> list[dict]:
        out, self._pending = self._pending, []
        if self.feed is not None:
            out += self._auth()
        if self.wtmp is not None:
            out += [session_event(action, s) for action, s in self.wtmp.sessions()]
        elif self._timer is not None and self._timer.due():
            now = {session_key(u): u for u in psutil.users()}
            out += [session_event("login", now[k]) for k in now.keys() - self.sessions.keys()]
            out += [session_event("logout", self.sessions[k]) for k in self.sessions.keys() - now.keys()]
            self.sessions = now
        return out

    def _auth(self) -> list[dict]:
        from .authlog import FileFollower, decode_journal, decode_line

        if isinstance(self.feed, FileFollower):
            events = [decode_line(line) for line in self.feed.lines()]
        elif hasattr(self.feed, "entries"):
            events = [decode_journal(e) for e in self.feed.entries()]
        else:
            events = self.feed.events()  # Windows: decoded already
        return [e for e in events if e is not None]

    def close(self):
        if self.feed is not None:
            self.feed.close()
