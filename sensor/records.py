"""What a platform backend hands the pipeline: small immutable records of kernel facts.

Backends (eBPF on Linux, ETW on Windows, psutil polling) decode their wire formats into these;
one place per record type (sensor.processes) turns them into the public schema. Named tuples:
a frozen dataclass took 8.8 us to build from 22 fields, a named tuple 2.5.
Strings from the kernel stay bytes here: they may not be UTF-8.
"""
from __future__ import annotations

from typing import NamedTuple

UNSET_ID = 0xFFFFFFFF  # kernel's "no loginuid / no session"


class ProcessExec(NamedTuple):
    ts_ns: int  # CLOCK_BOOTTIME
    pid: int
    tid: int
    ppid: int
    start_ns: int  # process start, CLOCK_BOOTTIME
    parent_start_ns: int  # 0: unknown (polling, Windows)
    uid: int
    gid: int
    euid: int
    egid: int
    argc: int
    args: tuple[bytes, ...]
    filename: bytes
    executable: bytes | None
    cwd: bytes | None
    comm: bytes
    loginuid: int = UNSET_ID
    sessionid: int = UNSET_ID
    cgroup_id: int = 0
    truncated: frozenset[str] = frozenset()  # args, filename, executable, cwd
    blocked: bool = False  # on the block list: the kernel killed it before it ran
    written: bool = False  # the image was created or written while the sensor ran
    # Windows (ETW, Event Log): the ids above are None and the account is a SID; the command line
    # is kept as recorded, not re-joined from args (its quoting is what rules match)
    command_line: bytes | None = None
    account: tuple[tuple[str, str], ...] = ()  # user.* pairs: id (SID), name, domain
    image_info: tuple[tuple[str, object], ...] = ()  # process.* of the exec only: pe.*, hash.*


class ProcessFork(NamedTuple):
    ts_ns: int
    pid: int  # the parent
    tid: int
    child_pid: int
    child_tid: int
    start_ns: int  # the child's
    parent_start_ns: int
    uid: int
    comm: bytes
    thread: bool = False


class Tamper(NamedTuple):
    """Another process aimed a signal (sig) or a ptrace request at the sensor."""
    ts_ns: int
    pid: int  # the sender
    tid: int
    target_pid: int
    sig: int
    request: int
    comm: bytes


class ProcessExit(NamedTuple):
    ts_ns: int
    pid: int
    ppid: int
    start_ns: int
    exit_code: int | None  # raw wait status: (code << 8) | signal; None when unknown (polling)
    comm: bytes
    code: int | None = None  # the exit code whole, as Windows reports it (exit_code is None then)


class BlockedOpen(NamedTuple):
    """A process opened a blocked file and the kernel killed it before the open returned: how
    a blocked script's run (its interpreter opening it) is stopped."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int
    path: bytes
    dev: int  # kernel encoding
    ino: int
    comm: bytes = b""
    truncated: bool = False  # the path


class FileActivity(NamedTuple):
    """A file operation; see bpf/sensor.h enum file_op for what path and path2 hold."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int | None  # None: unknown (watchdog, Windows), the live process with that pid
    op: str  # create, write, delete, rename, chmod, chown, link, symlink, truncate, mkdir, rmdir
    path: bytes
    path2: bytes | None = None
    dev: int | None = None  # kernel encoding; None when the record has no inode
    ino: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    count: int = 0  # write: calls folded into this record
    bytes: int = 0
    comm: bytes = b""
    truncated: frozenset[str] = frozenset()  # path, path2
    at_close: bool = False


class NetActivity(NamedTuple):
    """A connection, datagram flow, bind or listen; addresses as the kernel keeps them."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int | None  # None: unknown (watchdog, Windows), the live process with that pid
    op: str  # connect, accept, close, udp-send, udp-receive, bind, listen
    transport: str  # tcp, udp
    local: tuple[str, int]  # (ip, port)
    remote: tuple[str, int]
    netns: int = 0
    duration_ns: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    failed: bool = False
    inbound: bool = False
    payload: bytes = b""  # DNS messages (UDP port 53)
    payload_cut: bool = False
    comm: bytes = b""
    local_domain: str | None = None  # host names the record gives (Sysmon 3), not looked up
    remote_domain: str | None = None


class SecurityCall(NamedTuple):
    """A security-relevant syscall that returned: its raw arguments and strings."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int
    syscall: str
    args: tuple[int, ...]
    ret: int
    strings: tuple[bytes | None, bytes | None, bytes | None]
    truncated: frozenset[int] = frozenset()  # indices into strings
    comm: bytes = b""


class RegistryChange(NamedTuple):
    """A registry key created or deleted, or a value set or deleted (Windows)."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int | None  # None: unknown, the live process with that pid
    op: str  # create-key, delete-key, set-value, delete-value
    key: str  # as rules read it: HKLM\\..., HKU\\...
    value: str | None = None
    data: str | None = None
    data_type: str | None = None
    comm: bytes = b""


class DnsLookup(NamedTuple):
    """A name resolved through the OS's resolver, with its outcome (Windows DNS client, Sysmon 22)."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int | None
    name: str
    qtype: str | None = None
    status: int | None = None  # 0, or a DNS or Win32 error code
    results: tuple[str, ...] = ()
    comm: bytes = b""
