"""libbpf.so.1 through ctypes: open, set options, load, attach, map access, destroy."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
import threading
from collections import deque
from pathlib import Path

from ..errors import BpfLoadError, BpfObjectMissing, BpfPermission, LibbpfMissing, NoBTF

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_lib = None
_lib_lock = threading.Lock()
# libbpf's own messages (verifier logs included), kept so a failed load can say why.
_log: deque[str] = deque(maxlen=400)

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _printer(level, fmt, args):
    if level > 1:  # LIBBPF_DEBUG: relocation chatter; warnings carry the verifier log
        return 0
    buf = ctypes.create_string_buffer(1 << 16)  # verifier logs come as one long string
    # va_list is passed on as the opaque pointer it is on every 64-bit ABI libbpf runs on
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    _log.extend(buf.value.decode("utf-8", "replace").rstrip("\n").split("\n"))
    return 0


_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_print_cb = _PRINT_FN(_printer)

_SIGNATURES = {
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__btf": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_object__next_map": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_object__next_program": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__set_max_entries": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32]),
    "bpf_map__max_entries": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__value_size": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__reuse_fd": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map__initial_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_program__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__section_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]),
    "bpf_program__attach": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_program__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_link__destroy": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
    "libbpf_set_print": (ctypes.c_void_p, [_PRINT_FN]),
    "btf__parse": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "btf__free": (None, [ctypes.c_void_p]),
    "btf__type_cnt": (ctypes.c_uint32, [ctypes.c_void_p]),
    "btf__type_by_id": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_uint32]),
    "btf__find_by_name_kind": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_uint32]),
    "btf__resolve_size": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_uint32]),
}


def lib():
    """The loaded libbpf, with argument types declared; raises LibbpfMissing without it."""
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("bpf") or "libbpf.so.1"
            try:
                handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
            except OSError:
                try:
                    handle = ctypes.CDLL(name, use_errno=True)
                except OSError as exc:
                    raise LibbpfMissing(f"cannot load libbpf.so.1: {exc}") from None
            for fn, (restype, argtypes) in _SIGNATURES.items():
                f = getattr(handle, fn, None)
                if f is None:
                    raise LibbpfMissing(f"libbpf lacks {fn}: version 1.0 or later is needed")
                f.restype, f.argtypes = restype, argtypes
            handle.libbpf_set_print(_print_cb)
            _lib = handle
    return _lib


def version() -> str:
    b = lib()
    return f"{b.libbpf_major_version()}.{b.libbpf_minor_version()}"


def recent_log(lines: int = 25) -> str:
    return "\n".join(list(_log)[-lines:])


def _err() -> int:
    return ctypes.get_errno()


def _raise_load(what: str, err: int):
    log = recent_log()
    # EPERM without a verifier log is a capability or lockdown refusal, not a bad program
    if err in (errno.EPERM, errno.EACCES) and "PROG LOAD LOG" not in log:
        raise BpfPermission(f"{what}: {os.strerror(err)}")
    raise BpfLoadError(f"{what}: {os.strerror(err)}\n{log}".rstrip())


class BpfObject:
    """One compiled .bpf.o: options set, loaded, its programs attached, closed on exit.

    `rodata` sets `const volatile` globals before load (the verifier then prunes the branches
    they disable); `max_entries` resizes maps, e.g. the ring buffer; `reuse` makes a map the
    same kernel map as another object's ({name: fd}), so two objects can share state.
    """

    def __init__(self, path: str | os.PathLike, *, rodata: dict | None = None,
                 max_entries: dict | None = None, programs: list[str] | None = None,
                 reuse: dict | None = None):
        self.path = Path(path)
        self._links: list[int] = []
        self._obj = None
        self.loaded: list[str] = []  # the programs chosen by `programs`
        if not self.path.exists():
            raise BpfObjectMissing(f"eBPF object {self.path} not found")
        if not VMLINUX_BTF.exists():
            raise NoBTF(f"{VMLINUX_BTF} is missing: CO-RE programs cannot be relocated")
        b = lib()
        obj = b.bpf_object__open_file(str(self.path).encode(), None)
        if not obj:
            _raise_load(f"opening {self.path.name}", _err())
        self._obj = obj
        try:
            self._configure(rodata or {}, max_entries or {}, programs)
            for name, fd in (reuse or {}).items():
                if b.bpf_map__reuse_fd(self._map(name), fd):
                    raise BpfLoadError(f"cannot share map {name}: {os.strerror(_err())}")
            if b.bpf_object__load(obj):
                _raise_load(f"loading {self.path.name}", _err())
        except BaseException:
            self.close()
            raise

    def _configure(self, rodata: dict, max_entries: dict, programs):
        b = lib()
        for name, n in max_entries.items():
            if b.bpf_map__set_max_entries(self._map(name), n):
                raise BpfLoadError(f"cannot resize map {name} to {n}: {os.strerror(_err())}")
        if rodata:
            self._set_rodata(rodata)
        if programs is not None:
            for prog in self._programs():
                name = b.bpf_program__name(prog).decode()
                if callable(programs):  # decides from the name and the section (attach point)
                    wanted = programs(name, b.bpf_program__section_name(prog).decode())
                else:
                    wanted = name in programs
                b.bpf_program__set_autoload(prog, wanted)
                if wanted:
                    self.loaded.append(name)

    def _set_rodata(self, values: dict):
        from .btf import Btf

        b = lib()
        rodata = next((m for m in self._maps() if b.bpf_map__name(m).endswith(b".rodata")), None)
        if rodata is None:
            raise BpfLoadError(f"{self.path.name} has no .rodata to set {sorted(values)}")
        size = ctypes.c_size_t()
        base = b.bpf_map__initial_value(rodata, ctypes.byref(size))
        layout = Btf(b.bpf_object__btf(self._obj), owned=False).datasec(".rodata")
        for name, value in values.items():
            if name not in layout:
                raise BpfLoadError(f"{self.path.name} has no option {name!r}")
            off, width = layout[name]
            raw = int(value).to_bytes(width, sys.byteorder, signed=int(value) < 0)
            ctypes.memmove(base + off, raw, width)

    def _maps(self):
        b, m = lib(), None
        while m := b.bpf_object__next_map(self._obj, m):
            yield m

    def _programs(self):
        b, p = lib(), None
        while p := b.bpf_object__next_program(self._obj, p):
            yield p

    def _map(self, name: str):
        for m in self._maps():
            if lib().bpf_map__name(m).decode() == name:
                return m
        raise BpfLoadError(f"{self.path.name} has no map {name!r}")

    def attach(self, names: list[str] | None = None):
        """Attaches the named programs (all by default) at the point their section names."""
        b = lib()
        for prog in self._programs():
            name = b.bpf_program__name(prog).decode()
            if names is not None and name not in names:
                continue
            link = b.bpf_program__attach(prog)
            if not link:
                err = _err()
                section = b.bpf_program__section_name(prog).decode()
                hint = ""
                if section.startswith("tracepoint/") and not Path("/sys/kernel/tracing/events").exists():
                    hint = " (tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing)"
                raise BpfLoadError(f"attaching {name} to {section}: {os.strerror(err)}{hint}")
            self._links.append(link)
        return self

    # Programs whose skipped runs a twin records (bpf/activity/net.c: handle_tcp_state_nested).
    COVERED_MISSES = frozenset({"handle_tcp_state"})

    def recursion_misses(self) -> int:
        """Runs the kernel skipped because the program was already running on that CPU.

        Tracing programs run with preemption off, but an interrupt (a softirq) can fire the
        same tracepoint inside a run. The kernel counts the skipped runs per program (fdinfo,
        5.12+); we report them as loss, except where a twin program records them.
        """
        total = 0
        for prog in self._programs():
            fd = lib().bpf_program__fd(prog)
            if fd < 0 or lib().bpf_program__name(prog).decode() in self.COVERED_MISSES:
                continue
            try:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    total += sum(int(line.split()[1]) for line in f if line.startswith("recursion_misses:"))
            except OSError:
                pass
        return total

    def map_fd(self, name: str) -> int:
        return lib().bpf_map__fd(self._map(name))

    def map(self, name: str) -> "Map":
        m = self._map(name)
        b = lib()
        return Map(b.bpf_map__fd(m), b.bpf_map__value_size(m), b.bpf_map__max_entries(m))

    def detach(self):
        b = lib()
        while self._links:
            b.bpf_link__destroy(self._links.pop())

    def close(self):
        self.detach()
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Map:
    """Map access with u32 keys: enough for the sensor's arrays and pid sets."""

    def __init__(self, fd: int, value_size: int, max_entries: int):
        self.fd, self.value_size, self.max_entries = fd, value_size, max_entries

    def update(self, key: int | bytes, value: bytes):
        """key: a u32, or the key struct's bytes."""
        k = ctypes.create_string_buffer(key, len(key)) if isinstance(key, bytes) else ctypes.c_uint32(key)
        v = ctypes.create_string_buffer(value, self.value_size)
        if lib().bpf_map_update_elem(self.fd, ctypes.byref(k), v, 0):
            raise BpfLoadError(f"map update failed: {os.strerror(_err())}")

    def delete(self, key: int):
        k = ctypes.c_uint32(key)
        lib().bpf_map_delete_elem(self.fd, ctypes.byref(k))

    def keys(self) -> list[int]:
        """Every u32 key (fine for the small sets the sensor keeps)."""
        out, key, nxt = [], None, ctypes.c_uint32()
        while lib().bpf_map_get_next_key(self.fd, ctypes.byref(key) if key is not None else None,
                                         ctypes.byref(nxt)) == 0:
            out.append(nxt.value)
            key = ctypes.c_uint32(nxt.value)
        return out

    def lookup(self, key: int) -> bytes:
        """The value at u32 `key`, as bytes."""
        k, v = ctypes.c_uint32(key), ctypes.create_string_buffer(self.value_size)
        if lib().bpf_map_lookup_elem(self.fd, ctypes.byref(k), v):
            raise BpfLoadError(f"map lookup failed: {os.strerror(_err())}")
        return v.raw

    def percpu_values(self, key: int) -> list[bytes]:
        """Every CPU's value at `key` of a per-CPU array, as bytes."""
        ncpu = lib().libbpf_num_possible_cpus()
        stride = (self.value_size + 7) & ~7  # the kernel pads each CPU's copy to 8 bytes
        buf = ctypes.create_string_buffer(ncpu * stride)
        k = ctypes.c_uint32(key)
        if lib().bpf_map_lookup_elem(self.fd, ctypes.byref(k), buf):
            raise BpfLoadError(f"map lookup failed: {os.strerror(_err())}")
        raw = buf.raw
        return [raw[i * stride:i * stride + self.value_size] for i in range(ncpu)]

    def percpu_u64(self, key: int) -> list[int]:
        """Every CPU's u64 value at `key` of a per-CPU array."""
        return [int.from_bytes(v[:8], "little") for v in self.percpu_values(key)]
