"""Security-relevant syscalls on Linux: bpf/activity/security.c's records."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import syscalls, wire
from ..records import SecurityCall
from .activity import Activity, ActivityPart
from .process import _cstr

_N = wire.FC_NONE

# syscall -> (filter, (string argument indices), fd argument whose path is string 0)
CALLS = {
    "ptrace": (wire.SEC_PTRACE, (), _N),
    **{name: (wire.SEC_ANY, (), _N) for name in (
        "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
        "capset", "unshare", "setns")},
    "init_module": (wire.SEC_ANY, (_N, 2), _N),
    "finit_module": (wire.SEC_ANY, (_N, 1), 0),
    "delete_module": (wire.SEC_ANY, (0,), _N),
    "bpf": (wire.SEC_BPF, (), _N),
    "mount": (wire.SEC_ANY, (0, 1, 2), _N),
    "umount2": (wire.SEC_ANY, (_N, 0), _N),
    "move_mount": (wire.SEC_ANY, (1, 3), _N),
    "pivot_root": (wire.SEC_ANY, (0, 1), _N),
    "memfd_create": (wire.SEC_ANY, (0,), _N),
    **{name: (wire.SEC_SIGNAL, (), _N) for name in ("kill", "tkill", "tgkill")},
}


def call_table(numbers: dict[str, int]) -> dict[int, bytes]:
    out = {}
    for name, (filt, strs, fd) in CALLS.items():
        if name in numbers:
            s = (list(strs) + [_N] * 3)[:3]
            out[numbers[name]] = bytes([1, filt, *s, fd, 0, 0])
    return out


_SEC = wire.sec_event


@lru_cache(maxsize=1)
def _names() -> list[str]:
    return syscalls.names_array()


def decode(raw: bytes) -> SecurityCall | None:
    rec = np.frombuffer(raw[:_SEC.itemsize], dtype=_SEC)[0]
    if int(rec["type"]) != wire.EVENT_SECURITY:
        return None
    nr = int(rec["nr"])
    strings = tuple(bytes(rec["str"][i][:max(int(rec["str_len"][i]) - 1, 0)]) if rec["str_len"][i] else None
                    for i in range(3))
    flags = int(rec["flags"])
    return SecurityCall(
        ts_ns=int(rec["ts_ns"]), pid=int(rec["pid"]), tid=int(rec["tid"]), start_ns=int(rec["start_ns"]),
        syscall=_names()[nr] if nr < len(_names()) and _names()[nr] else str(nr),
        args=tuple(int(a) for a in rec["args"]), ret=int(rec["ret"]), strings=strings,
        truncated=frozenset(i for i in range(3) if flags & (1 << i)), comm=_cstr(bytes(rec["comm"])))


class SecuritySource(ActivityPart):
    """The security part of the shared activity programs; `poll` returns SecurityCall records."""

    name = "security"
    ring = "sec_events"
    event_types = (wire.EVENT_SECURITY,)
    decode = staticmethod(decode)

    def __init__(self, activity: Activity, *, ring_buffer_bytes: int = 1 << 20):
        super().__init__(activity, ring_buffer_bytes)

    def setup(self, obj, numbers):
        table = obj.map("security_calls")
        for nr, entry in call_table(numbers).items():
            table.update(nr, entry)
