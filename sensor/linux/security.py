"""Security-relevant syscalls on Linux: bpf/activity/security.c's records."""
from __future__ import annotations

from functools import lru_cache

from .. import syscalls, wire
from ..records import SecurityCall
from .activity import Activity, ActivityPart

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


_CALL, _SEC = wire.CTYPES["sec_call"], wire.CTYPES["sec_event"]


def call_table(numbers: dict[str, int]) -> dict[int, bytes]:
    """security_calls entries {syscall nr: struct sec_call} for the syscalls this arch has."""
    out = {}
    for name, (filt, strs, fd) in CALLS.items():
        if name in numbers:
            out[numbers[name]] = bytes(_CALL(wanted=1, filter=filt, str=(*strs, _N, _N, _N)[:3], fd_path=fd))
    return out


@lru_cache(maxsize=1)
def _names() -> list[str]:
    return syscalls.names_array()


def decode(raw: bytes) -> SecurityCall | None:
    r = _SEC.from_buffer_copy(raw)
    if r.type != wire.EVENT_SECURITY:
        return None
    nr, flags, names = r.nr, r.flags, _names()
    strings = tuple(s[:n - 1] if n else None for s, n in zip(r.str, r.str_len))
    return SecurityCall(
        ts_ns=r.ts_ns, pid=r.pid, tid=r.tid, start_ns=r.start_ns,
        syscall=names[nr] if nr < len(names) and names[nr] else str(nr),
        args=tuple(r.args), ret=r.ret, strings=strings,
        truncated=frozenset(i for i in range(3) if flags & (1 << i)), comm=r.comm)


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
