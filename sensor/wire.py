"""The Python mirror of bpf/sensor.h: its enum values, and record layouts as numpy dtypes and ctypes structs."""
import ctypes
import struct
from operator import itemgetter

import numpy as np

# tests/test_wire.py compares every constant here with the enum value of the same name in the compiled
# objects' BTF, checks that no enum value of the header is missing here, and checks every layout.
# Grouped as the header's enums are, in its order.

TASK_COMM_LEN = 16  # the kernel's, from vmlinux.h: checked as the size of the comm fields

# enum exec_limits
ARGS_MAX, FILENAME_MAX_LEN, NAME_MAX_LEN, PATH_DEPTH_MAX, EXEC_DATA_MAX = 8192, 512, 256, 32, 16384

# enum event_type, tamper_kind
(EVENT_EXEC, EVENT_FORK, EVENT_EXIT, EVENT_SYSCALL, EVENT_TAMPER, EVENT_FILE, EVENT_NET,
 EVENT_SECURITY) = range(1, 9)
EVENT_BLOCKED = 9  # a file_event: a process opened a blocked file and was killed
EVENT_TYPES = {EVENT_EXEC: "exec", EVENT_FORK: "fork", EVENT_EXIT: "exit", EVENT_TAMPER: "tamper"}
TAMPER_SIGNAL, TAMPER_PTRACE = 1, 2

# enum event_flags
FLAG_ARGS_TRUNCATED = 1 << 0
FLAG_FILENAME_TRUNCATED = 1 << 1
FLAG_EXE_TRUNCATED = 1 << 2
FLAG_CWD_TRUNCATED = 1 << 3
FLAG_THREAD = 1 << 4
FLAG_DATA_FULL = 1 << 5
FLAG_BLOCKED = 1 << 6
FLAG_WRITTEN = 1 << 7

# enum file_limits, file_op, file_flags, file_call_kind, file_call_arg, prefix_kind
FILE_PATH_MAX, FILE_DEPTH_MAX, PREFIX_MAX = 4096, 64, 256
(FILE_CREATE, FILE_WRITE, FILE_DELETE, FILE_RENAME, FILE_CHMOD, FILE_CHOWN, FILE_LINK, FILE_SYMLINK,
 FILE_TRUNCATE, FILE_MKDIR, FILE_RMDIR) = range(1, 12)
FILE_PATH_TRUNCATED, FILE_PATH2_TRUNCATED, FILE_AT_CLOSE, FILE_HAS_INODE = 1, 2, 4, 8
FC_OPEN, FC_WRITE, FC_CLOSE, FC_FD, FC_PATH = 1, 2, 3, 4, 5
FC_NONE = 0xFF
PREFIX_WATCH, PREFIX_EXCLUDE = 1, 2

# enum net_limits, net_op, net_flags
NET_PAYLOAD_MAX = 512
NET_CONNECT, NET_ACCEPT, NET_CLOSE, NET_UDP_SEND, NET_UDP_RECV, NET_BIND, NET_LISTEN = range(1, 8)
NET_FAILED, NET_PAYLOAD_CUT, NET_INBOUND = 1, 2, 4

# enum sec_limits, sec_filter
SEC_STR_MAX = 512
SEC_ANY, SEC_PTRACE, SEC_SIGNAL, SEC_BPF = 0, 1, 2, 3

# enum trace_limits, syscall_flags, trace_state, spec_flags, spec_arg (trace_batch_limits: by trace_batch)
SYSCALL_NR_MAX, TRACE_PATH_MAX, TRACE_ADDR_MAX = 1024, 256, 128
SC_NO_RETURN, SC_PATH_TRUNCATED, SC_PATH2_TRUNCATED = 1, 2, 4
TRACE_ON, TRACE_ARMED = 1, 2
SPEC_WANTED, SPEC_ADDR_AT_EXIT = 1, 2
SPEC_ARG_NONE = 0xFF

_HEADER = [
    ("ts_ns", "<u8"), ("type", "<u4"), ("size", "<u4"),
    ("pid", "<u4"), ("tid", "<u4"), ("cpu", "<u4"), ("_pad", "<u4"),
]
event_header = np.dtype(_HEADER)

exec_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("parent_start_ns", "<u8"), ("cgroup_id", "<u8"),
    ("ppid", "<u4"), ("parent_tid", "<u4"), ("old_tid", "<u4"),
    ("uid", "<u4"), ("gid", "<u4"), ("euid", "<u4"), ("egid", "<u4"),
    ("loginuid", "<u4"), ("sessionid", "<u4"), ("argc", "<u4"), ("args_len", "<u4"),
    ("filename_len", "<u2"), ("exe_len", "<u2"), ("cwd_len", "<u2"), ("flags", "<u2"),
    ("comm", f"S{TASK_COMM_LEN}"), ("_pad2", "<u4"),
])

fork_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("parent_start_ns", "<u8"),
    ("child_pid", "<u4"), ("child_tid", "<u4"), ("flags", "<u4"), ("uid", "<u4"),
    ("comm", f"S{TASK_COMM_LEN}"),
])

exit_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("ppid", "<u4"), ("exit_code", "<u4"),
    ("comm", f"S{TASK_COMM_LEN}"),
])

syscall_spec = np.dtype([
    ("flags", "u1"), ("path_arg", "u1"), ("path2_arg", "u1"), ("addr_arg", "u1"),
    ("addrlen_arg", "u1"), ("_pad", "V3"),
])

_SYSCALL = [
    ("enter_ns", "<u8"), ("duration_ns", "<u8"), ("ret", "<i8"),
    ("pid", "<u4"), ("tid", "<u4"), ("nr", "<u4"), ("flags", "<u4"),
]
syscall_event = np.dtype(_SYSCALL)

syscall_args_event = np.dtype(_SYSCALL + [
    ("args", "<u8", (6,)), ("path_len", "<u2"), ("path2_len", "<u2"), ("addr_len", "<u2"),
    ("_pad", "<u2"), ("path", f"S{TRACE_PATH_MAX}"), ("path2", f"S{TRACE_PATH_MAX}"),
    ("addr", f"V{TRACE_ADDR_MAX}"),
])

# The traced set as a bitmap (trace_bits in bpf/lib/common.h): one bit per possible tgid (PID_MAX_LIMIT).
TRACE_BITS_WORDS = 4194304 // 64

# A per-CPU batch of syscall records (bpf/sensor.h): what the kernel holds back when tracing stops.
TRACE_BATCH, TRACE_BATCH_ARGS, TRACE_BATCH_BYTES = 64, 16, 11776
trace_batch = np.dtype([("n", "<u4"), ("_pad", "<u4"), ("recs", f"V{TRACE_BATCH_BYTES}")])
# enum trace_held_limits. A batch the ring refused, waiting in the kernel's shared queue (odd turn: waiting).
TRACE_HELD = 256
trace_held = np.dtype([("turn", "<u8"), ("batch", trace_batch)])

# enum block_how: what the kernel stops for a file on the block list (its blocked_exec value)
BLOCK_EXEC, BLOCK_OPEN = 1, 2

file_key = np.dtype([("dev", "<u8"), ("ino", "<u8")])

tamper_event = np.dtype(_HEADER + [
    ("target_pid", "<u4"), ("kind", "<u4"), ("sig", "<u4"), ("request", "<u4"),
    ("comm", f"S{TASK_COMM_LEN}"),
])

file_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("dev", "<u8"), ("ino", "<u8"), ("count", "<u8"), ("bytes", "<u8"),
    ("op", "<u4"), ("flags", "<u4"), ("mode", "<u4"), ("uid", "<u4"), ("gid", "<u4"),
    ("path_len", "<u2"), ("path2_len", "<u2"), ("comm", f"S{TASK_COMM_LEN}"),
])

net_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("duration_ns", "<u8"), ("bytes_sent", "<u8"), ("bytes_received", "<u8"),
    ("netns", "<u4"), ("op", "<u2"), ("family", "<u2"), ("protocol", "<u2"), ("lport", "<u2"),
    ("rport", "<u2"), ("flags", "<u2"), ("laddr", "V16"), ("raddr", "V16"), ("payload_len", "<u2"),
    ("_pad2", "V6"), ("comm", f"S{TASK_COMM_LEN}"),
])

sec_call = np.dtype([("wanted", "u1"), ("filter", "u1"), ("str", "u1", (3,)), ("fd_path", "u1"),
                     ("_pad", "V2")])

sec_event = np.dtype(_HEADER + [
    ("start_ns", "<u8"), ("args", "<u8", (6,)), ("ret", "<i8"), ("nr", "<u4"), ("str_len", "<u2", (3,)),
    ("flags", "<u2"), ("comm", f"S{TASK_COMM_LEN}"), ("str", f"S{SEC_STR_MAX}", (3,)), ("_pad2", "V4"),
])

file_call = np.dtype([(name, "u1") for name in (
    "kind", "op", "dirfd", "path", "dirfd2", "path2", "mode", "owner", "flags", "bytes", "raw2")] + [("_pad", "V5")])

prefix_key = np.dtype([("prefixlen", "<u4"), ("path", f"S{PREFIX_MAX}")])

# C struct name -> dtype, for the layout test and for decoders.
STRUCTS = {
    "event_header": event_header,
    "exec_event": exec_event,
    "fork_event": fork_event,
    "exit_event": exit_event,
    "tamper_event": tamper_event,
    "syscall_spec": syscall_spec,
    "file_key": file_key,
    "syscall_event": syscall_event,
    "syscall_args_event": syscall_args_event,
    "trace_batch": trace_batch,
    "trace_held": trace_held,
    "file_event": file_event,
    "prefix_key": prefix_key,
    "file_call": file_call,
    "net_event": net_event,
    "sec_call": sec_call,
    "sec_event": sec_event,
}

_SCALARS = {"u1": ctypes.c_uint8, "u2": ctypes.c_uint16, "u4": ctypes.c_uint32, "u8": ctypes.c_uint64,
            "i4": ctypes.c_int32, "i8": ctypes.c_int64}


def _ctype(name: str, dtype: np.dtype) -> type[ctypes.Structure]:
    """The ctypes struct of a dtype, for decoding one record by field name: a char array (S) reads
    as bytes up to its first NUL, as C reads it; raw bytes (V) as an array of bytes."""
    fields = []
    for field in dtype.names:
        sub = dtype.fields[field][0]
        base = sub.base
        if base.names:
            t = _ctype(field, base)
        elif base.kind in "SV":
            t = (ctypes.c_char if base.kind == "S" else ctypes.c_uint8) * base.itemsize
        else:
            t = _SCALARS[f"{base.kind}{base.itemsize}"]
        for n in reversed(sub.shape):
            t = t * n
        fields.append((field, t))
    cls = type(name, (ctypes.LittleEndianStructure,), {"_fields_": fields})
    # the dtypes are packed and the C structs have no implicit holes: natural alignment agrees
    assert ctypes.sizeof(cls) == dtype.itemsize and all(
        getattr(cls, f).offset == dtype.fields[f][1] for f in dtype.names), name
    return cls


# C struct name -> ctypes struct, built from the dtypes above (so checked against BTF with them).
CTYPES = {name: _ctype(name, dtype) for name, dtype in STRUCTS.items()}


_FORMATS = {"u1": "B", "u2": "H", "u4": "I", "u8": "Q", "i4": "i", "i8": "q"}


def reader(name: str, fields: tuple[str, ...]):
    """raw record -> the values of `fields` of C struct `name`, in that order: one struct.Struct
    unpack at the layout's (BTF-checked) offsets, four times faster than a ctypes copy read field
    by field, for the records every exec makes. Char arrays come whole, NUL padding included."""
    dtype = STRUCTS[name]
    placed = sorted((dtype.fields[f][1], f) for f in fields)
    fmt, at = "<", 0
    for offset, f in placed:
        sub = dtype.fields[f][0]
        if sub.shape or sub.names:
            raise ValueError(f"{name}.{f}: only scalars and byte strings can be read this way")
        fmt += f"{offset - at}x" if offset > at else ""
        fmt += f"{sub.itemsize}s" if sub.kind in "SV" else _FORMATS[f"{sub.kind}{sub.itemsize}"]
        at = offset + sub.itemsize
    unpack = struct.Struct(fmt).unpack_from
    order = [[f for _, f in placed].index(f) for f in fields]
    if order == list(range(len(fields))):
        return unpack
    pick = itemgetter(*order)
    return lambda raw: pick(unpack(raw))
