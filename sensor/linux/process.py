"""Process lifecycle source on Linux: bpf/process.bpf.c's exec/fork/exit records, decoded."""
from __future__ import annotations

import ctypes
import logging
import os
import struct
from pathlib import Path

from .. import wire
from ..records import ProcessExec, ProcessExit, ProcessFork, Tamper
from ..errors import SensorError
from ..source import BLOCK, SHARED_MAPS, WATCH_PTRACE
from .block import block_how, decode_blocked
from .libbpf import BpfLoadError, BpfObject
from .source import RingSource

log = logging.getLogger("sensor.linux.process")

OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "process.bpf.o"
LSM_OBJECT = OBJECT.with_name("lsm.bpf.o")

# Records are read by field name (wire.reader: one struct unpack at the BTF-checked offsets),
# named in the structs' own order, so the unpack's tuple needs no reordering.
_EXEC_FIELDS = wire.reader("exec_event", (
    "ts_ns", "pid", "tid", "start_ns", "parent_start_ns", "cgroup_id", "ppid", "uid", "gid", "euid", "egid",
    "loginuid", "sessionid", "argc", "args_len", "filename_len", "exe_len", "cwd_len", "flags", "comm"))
_FORK_FIELDS = wire.reader("fork_event", (
    "ts_ns", "pid", "tid", "start_ns", "parent_start_ns", "child_pid", "child_tid", "flags", "uid", "comm"))
_EXIT_FIELDS = wire.reader("exit_event", ("ts_ns", "pid", "start_ns", "ppid", "exit_code", "comm"))
# Every field given, in order, a record is built by tuple.__new__: a NamedTuple's own __new__
# is a Python function (600 of the 850 ns a ProcessExit took; three records per exec).
_new = tuple.__new__
_TAMPER = wire.CTYPES["tamper_event"]  # rare: read through ctypes
_FILE_KEY = wire.CTYPES["file_key"]
_EXEC_SIZE = ctypes.sizeof(wire.CTYPES["exec_event"])  # data[] starts here
_TYPE, _TYPE_AT = struct.Struct("<I"), wire.CTYPES["event_header"].type.offset
_TRUNC = ((wire.FLAG_ARGS_TRUNCATED, "args"), (wire.FLAG_FILENAME_TRUNCATED, "filename"),
          (wire.FLAG_EXE_TRUNCATED, "executable"), (wire.FLAG_CWD_TRUNCATED, "cwd"))
_TRUNC_ANY = sum(bit for bit, _ in _TRUNC)
_NONE: frozenset = frozenset()


def _cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def kernel_path(components: bytes | None) -> bytes | None:
    """A path the kernel sent as dentry names leaf first, NUL-terminated: b"echo\\0bin\\0usr\\0"."""
    if components is None:
        return None
    parts = components.rstrip(b"\0").split(b"\0")
    if b"" in parts or b"/" in parts:  # a detached tree's root is named "/": not a component
        parts = [p for p in parts if p and p != b"/"]
    parts.reverse()
    return b"/" + b"/".join(parts)


def decode(raw: bytes):
    """One ring-buffer record to its ProcessExec/Fork/Exit, or None for an unknown type."""
    kind = _TYPE.unpack_from(raw, _TYPE_AT)[0]
    if kind == wire.EVENT_EXEC:
        return _decode_exec(raw)
    if kind == wire.EVENT_FORK:
        ts, pid, tid, start, parent_start, child, child_tid, flags, uid, comm = _FORK_FIELDS(raw)
        return _new(ProcessFork, (ts, pid, tid, child, child_tid, start, parent_start, uid, _cstr(comm),
                                  bool(flags & wire.FLAG_THREAD)))
    if kind == wire.EVENT_EXIT:
        ts, pid, start, ppid, code, comm = _EXIT_FIELDS(raw)
        return _new(ProcessExit, (ts, pid, ppid, start, code, _cstr(comm), None))
    if kind == wire.EVENT_TAMPER:
        r = _TAMPER.from_buffer_copy(raw)
        return Tamper(r.ts_ns, r.pid, r.tid, r.target_pid, r.sig if r.kind == wire.TAMPER_SIGNAL else 0,
                      r.request, r.comm)
    if kind == wire.EVENT_BLOCKED:  # the activity programs' blocked opens share this ring
        return decode_blocked(raw)
    return None


def _decode_exec(raw: bytes) -> ProcessExec:
    (ts, pid, tid, start, parent_start, cgroup, ppid, uid, gid, euid, egid, loginuid, sessionid, argc,
     args_len, filename_len, exe_len, cwd_len, flags, comm) = _EXEC_FIELDS(raw)
    # data[] holds argv, the name passed to execve, the executable and cwd, back to back
    fn_at = _EXEC_SIZE + args_len
    exe_at = fn_at + filename_len
    cwd_at = exe_at + exe_len
    args = raw[_EXEC_SIZE:fn_at].split(b"\0")
    if args[-1] == b"":  # the block ends in a NUL unless it was cut
        args.pop()
    return _new(ProcessExec, (
        ts, pid, tid, ppid, start, parent_start, uid, gid, euid, egid, argc,
        tuple(args), _cstr(raw[fn_at:exe_at]),
        kernel_path(raw[exe_at:cwd_at]) if exe_len else None,
        kernel_path(raw[cwd_at:cwd_at + cwd_len]) if cwd_len else None,
        _cstr(comm), loginuid, sessionid, cgroup,
        frozenset(name for bit, name in _TRUNC if flags & bit) if flags & _TRUNC_ANY else _NONE,
        bool(flags & wire.FLAG_BLOCKED), bool(flags & wire.FLAG_WRITTEN), None, (), (),
    ))


class ProcessSource(RingSource):
    """Loads and attaches the process programs; `poll` returns decoded records."""

    name = "process"
    capabilities = frozenset({SHARED_MAPS, BLOCK, WATCH_PTRACE})
    event_types = (*wire.EVENT_TYPES, wire.EVENT_BLOCKED)
    decode = staticmethod(decode)

    def __init__(self, *, ring_buffer_bytes: int = 4 << 20, threads: bool = False,
                 wakeup_bytes: int | None = None, object_path: Path = OBJECT,
                 only_traced: bool = False, follow_forks: bool = True,
                 blocked: list[tuple[int, int, str]] = ()):
        self.ring_buffer_bytes = ring_buffer_bytes
        # Exec/fork/exit are rare next to syscalls, and response latency counts (measured: a
        # 10 ms process is killed in time with the ring's adaptive wakeup, not with a quarter-full
        # threshold): 0 keeps the kernel's default, which wakes a reader that has caught up.
        self.wakeup_bytes = 0 if wakeup_bytes is None else wakeup_bytes
        self.threads = threads
        self.object_path = object_path
        # `sensor trace`: only processes in the `traced` map, which forks extend in the kernel
        self.only_traced, self.follow_forks = only_traced, follow_forks
        self.blocked = list(blocked)  # (kernel dev, inode, path) of files killed at exec (scripts: at open)

    def start(self):
        obj = BpfObject(self.object_path,
                        rodata={"wakeup_bytes": self.wakeup_bytes, "trace_threads": self.threads,
                                "only_traced": self.only_traced, "follow_forks": self.follow_forks},
                        max_entries={"events": self.ring_buffer_bytes,
                                     "trace_bits": wire.TRACE_BITS_WORDS if self.only_traced else 1})
        def attach(o):
            core = ["handle_exec", "handle_fork", "handle_exit", "handle_signal"]
            self._lsm = self._load_lsm(o)
            o.attach(core)

        def setup(o):
            # the sensor's own pid is excluded, and the block list in place, before any program runs
            o.map("ignored_tgids").update(os.getpid(), b"\x01")
            blocked = o.map("blocked_exec")
            for dev, ino, path in self.blocked:
                blocked.update(bytes(_FILE_KEY(dev=dev, ino=ino)), block_how(path))

        return self._open(obj, setup, attach)

    def watch_ptrace(self):
        """Attaches the ptrace-at-the-sensor program, for when no other program sees ptrace.

        Not by default: a classic syscall tracepoint hooks the raw sys_enter tracepoint, and with
        two callbacks there the kernel calls each through an indirect (retpoline) call on every
        syscall of the host (measured: about 90 ns a call next to the activity or trace programs,
        26 ns alone). The security source reports the same calls from its own program."""
        try:
            self._obj.attach(["handle_ptrace"])
        except BpfLoadError as exc:  # tracefs missing: the rest still runs
            log.warning("ptrace aimed at the sensor will not be seen: %s", str(exc).splitlines()[0])

    def shared_maps(self) -> dict:
        """Maps other objects share with this one: the sensor's own pids, written files, and for
        the activity programs' blocked opens the block list, this ring and its loss counts."""
        if self._obj is None:  # not running (the psutil fallback took over): nothing to share
            return {}
        return {name: self._obj.map_fd(name)
                for name in ("ignored_tgids", "written", "blocked_exec", "events", "lost")}

    def traced(self):
        """The map of traced processes (tgid -> 1) that trace mode filters on."""
        return self._obj.map("traced")

    def trace_maps(self) -> dict:
        """The trace mode maps the syscall programs share: the traced set and its bitmap."""
        return {name: self._obj.map_fd(name) for name in ("traced", "trace_bits")}

    _lsm = None

    @property
    def enforcement(self) -> str:
        """How blocked executables are stopped: lsm (clean -EPERM) or send_signal (SIGKILL)."""
        return "lsm" if self._lsm is not None else "send_signal"

    def _load_lsm(self, obj):
        """BPF LSM where the kernel loads it, sharing the block list; None where it refuses."""
        if self.only_traced or not LSM_OBJECT.exists():
            return None
        try:
            lsm = BpfObject(LSM_OBJECT, reuse={"blocked_exec": obj.map_fd("blocked_exec"),
                                               "ignored_tgids": obj.map_fd("ignored_tgids")})
            return lsm.attach()
        except SensorError as exc:
            log.info("BPF LSM unavailable (%s): blocking with bpf_send_signal", str(exc).splitlines()[0])
            return None

    def close(self):
        if self._lsm is not None:
            self._lsm.close()
            self._lsm = None
        super().close()

    def block(self, dev: int, ino: int, path: str | None = None):
        """Adds a file's inode to the kernel's block list while running (see block_how)."""
        self._obj.map("blocked_exec").update(bytes(_FILE_KEY(dev=dev, ino=ino)), block_how(path))

    def stats(self) -> dict:
        return {**super().stats(), "enforcement": self.enforcement}
