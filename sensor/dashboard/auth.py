"""Login by token or password, cookie sessions, CSRF tokens and the security headers of every answer."""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from ..errors import SensorError

COOKIE = "sensor_panel"
SESSION_SECONDS = 12 * 3600
# Scripts and styles only from the panel's own files: an injected tag or attribute never runs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
           "Cache-Control": "no-store"}


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class Auth:
    """Who may log in (a token, and/or USER:PASSWORD lines) and the sessions of those who did."""

    def __init__(self, token: str | None, passwords: dict[str, str], token_user: str):
        self.token, self.passwords, self.token_user = token, passwords, token_user
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def read_password_file(path: str) -> dict[str, str]:
        """USER:PASSWORD per line (a bare password is user `admin`); # comments and blanks skipped."""
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise SensorError(f"--password-file {path}: {exc.strerror}") from None
        out = {}
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            user, password = (user, password) if sep else ("admin", line)
            if len(password) < 8:
                raise SensorError(f"--password-file {path}: the password of {user!r} is shorter than 8 characters")
            out[user] = password
        if not out:
            raise SensorError(f"--password-file {path}: no password in it")
        return out

    def check_token(self, given: str) -> str | None:
        """The user a correct token logs in as, else None (compared in constant time)."""
        if self.token and given and hmac.compare_digest(given.encode(), self.token.encode()):
            return self.token_user
        return None

    def check_password(self, user: str, password: str) -> str | None:
        want = self.passwords.get(user)
        if want is not None and hmac.compare_digest(password.encode(), want.encode()):
            return user
        return None

    def start(self, user: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        s = Session(user, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS)
        with self._lock:
            now = time.time()
            for k in [k for k, v in self.sessions.items() if v.expires < now]:
                del self.sessions[k]
            self.sessions[sid] = s
        return sid, s

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None or s.expires < time.time():
            return None
        return s

    def end(self, sid: str | None):
        with self._lock:
            self.sessions.pop(sid or "", None)

    @staticmethod
    def csrf_ok(session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())
