"""Logins and logouts from wtmp, the append-only log of sessions: unlike utmp's list of who is on
now, it keeps a session that began and ended between two looks."""
from __future__ import annotations

import os
import struct
from collections import namedtuple

# struct utmp on Linux (glibc, 64-bit and 32-bit alike: times are 32-bit there)
RECORD = struct.Struct("<h2xi32s4s32s256shhi2i4i20s")  # 384 bytes
USER_PROCESS, DEAD_PROCESS = 7, 8

# the shape of psutil.users() entries, so one function makes session events from both
Session = namedtuple("Session", "name terminal host started pid")


def _s(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


class WtmpFollower:
    """Reads the records appended since the last call; starts at the end (the past is not news)
    and starts over when the file is rotated or truncated."""

    def __init__(self, path: str = "/var/log/wtmp"):
        self.path = path
        self._pos = self._ino = None
        self._open_lines: dict[str, Session] = {}  # terminal -> its login, for logouts (they carry no user)

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st

    def start(self):
        st = self._stat()
        self._ino = st.st_ino if st else None
        self._pos = st.st_size - st.st_size % RECORD.size if st else 0
        return self

    def sessions(self) -> list[tuple[str, Session]]:
        """[("login" | "logout", Session)] for the records appended since the last call."""
        st = self._stat()
        if st is None:
            return []
        if st.st_ino != self._ino or st.st_size < self._pos:  # rotated or truncated: a new file
            self._ino, self._pos = st.st_ino, 0
        end = st.st_size - st.st_size % RECORD.size  # a record still being written waits
        if end <= self._pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read(end - self._pos)
        self._pos = end
        out = []
        for off in range(0, len(data), RECORD.size):
            (kind, pid, line, _id, user, host, _t, _e, _sess, sec, usec, *_rest) = RECORD.unpack_from(data, off)
            terminal = _s(line)
            if kind == USER_PROCESS:
                s = Session(_s(user), terminal, _s(host), sec + usec / 1e6, pid)
                self._open_lines[terminal] = s
                out.append(("login", s))
            elif kind == DEAD_PROCESS and terminal:
                login = self._open_lines.pop(terminal, None)
                out.append(("logout", Session(login.name if login else _s(user), terminal,
                                              login.host if login else _s(host),
                                              login.started if login else sec + usec / 1e6, pid)))
        return out
