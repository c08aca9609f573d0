"""What a platform backend hands the pipeline: small immutable records of kernel facts.

Backends (eBPF on Linux, ETW on Windows, psutil polling) decode their wire formats into these;
one place per record type (sensor.processes) turns them into the public schema.
Strings from the kernel stay bytes here: they may not be UTF-8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UNSET_ID = 0xFFFFFFFF  # kernel's "no loginuid / no session"


@dataclass(frozen=True, slots=True)
class ProcessExec:
    ts_ns: int  # CLOCK_BOOTTIME
    pid: int
    tid: int
    ppid: int
    start_ns: int  # process start, CLOCK_BOOTTIME
    parent_start_ns: int
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
    truncated: frozenset[str] = field(default_factory=frozenset)  # args, filename, executable, cwd
    blocked: bool = False  # on the block list: the kernel killed it before it ran
    written: bool = False  # the image was created or written while the sensor ran


@dataclass(frozen=True, slots=True)
class ProcessFork:
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


@dataclass(frozen=True, slots=True)
class Tamper:
    """Another process aimed a signal (sig) or a ptrace request at the sensor."""
    ts_ns: int
    pid: int  # the sender
    tid: int
    target_pid: int
    sig: int
    request: int
    comm: bytes


@dataclass(frozen=True, slots=True)
class ProcessExit:
    ts_ns: int
    pid: int
    ppid: int
    start_ns: int
    exit_code: int | None  # raw wait status: (code << 8) | signal; None when unknown (polling)
    comm: bytes


@dataclass(frozen=True, slots=True)
class BlockedOpen:
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


@dataclass(frozen=True, slots=True)
class FileActivity:
    """A file operation; see bpf/sensor.h enum file_op for what path and path2 hold."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int
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
    truncated: frozenset[str] = field(default_factory=frozenset)  # path, path2
    at_close: bool = False


@dataclass(frozen=True, slots=True)
class NetActivity:
    """A connection, datagram flow, bind or listen; addresses as the kernel keeps them."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int
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


@dataclass(frozen=True, slots=True)
class SecurityCall:
    """A security-relevant syscall that returned: its raw arguments and strings."""
    ts_ns: int
    pid: int
    tid: int
    start_ns: int
    syscall: str
    args: tuple[int, ...]
    ret: int
    strings: tuple[bytes | None, bytes | None, bytes | None]
    truncated: frozenset[int] = field(default_factory=frozenset)  # indices into strings
    comm: bytes = b""
