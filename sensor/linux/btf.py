"""Reads BTF type info through libbpf: struct layouts, enum values and data-section variable offsets."""
from __future__ import annotations

import ctypes
import os

from . import libbpf

BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_ENUM = 1, 3, 4, 6
_MODIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag: see through
BTF_KIND_DATASEC = 15


class _Type(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _Triple(ctypes.Structure):
    # btf_member {name_off, type, offset} and btf_var_secinfo {type, offset, size} share a shape
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32), ("c", ctypes.c_uint32)]


class _Enumerator(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class Btf:
    """BTF of a compiled object (parsed from the ELF) or of a loaded bpf_object."""

    def __init__(self, handle: int, owned: bool = True):
        self._h, self._owned = handle, owned

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Btf":
        h = libbpf.lib().btf__parse(os.fsencode(path), None)
        if not h:
            raise libbpf.BpfLoadError(f"no BTF in {path}: {os.strerror(ctypes.get_errno())}")
        return cls(h)

    def close(self):
        if self._owned and self._h:
            libbpf.lib().btf__free(self._h)
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _find(self, name: str, kind: int) -> tuple[int, _Type]:
        b = libbpf.lib()
        tid = b.btf__find_by_name_kind(self._h, name.encode(), kind)
        if tid < 0:
            raise KeyError(name)
        return tid, _Type.from_address(b.btf__type_by_id(self._h, tid))

    def _entries(self, t: _Type):
        vlen = t.info & 0xFFFF
        base = ctypes.addressof(t) + ctypes.sizeof(_Type)
        return [_Triple.from_address(base + i * ctypes.sizeof(_Triple)) for i in range(vlen)]

    def _name(self, off: int) -> str:
        return libbpf.lib().btf__name_by_offset(self._h, off).decode()

    def has_type(self, name: str, kind: int) -> bool:
        return libbpf.lib().btf__find_by_name_kind(self._h, name.encode(), kind) >= 0

    def struct(self, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
        """(size, {member: (byte offset, byte size)}) of `struct name`."""
        b = libbpf.lib()
        _, t = self._find(name, BTF_KIND_STRUCT)
        kflag = t.info >> 31
        members = {}
        for m in self._entries(t):
            bits = m.c & 0xFFFFFF if kflag else m.c
            members[self._name(m.a)] = (bits // 8, max(b.btf__resolve_size(self._h, m.b), 0))
        return t.size, members

    def kinds(self, name: str) -> dict[str, str]:
        """{member: numpy kind} of `struct name`: "i"/"u" integers (or arrays of them), "S" char
        arrays (strings), "V" structs."""
        _, t = self._find(name, BTF_KIND_STRUCT)
        return {self._name(m.a): self._kind(m.b) for m in self._entries(t)}

    def _kind(self, tid: int) -> str:
        b = libbpf.lib()
        t = _Type.from_address(b.btf__type_by_id(self._h, tid))
        kind = (t.info >> 24) & 0x1F
        if kind in _MODIFIERS:
            return self._kind(t.size)  # size/type share a slot: here the type
        if kind == BTF_KIND_ARRAY:  # struct btf_array {type, index_type, nelems} follows
            elem = _Triple.from_address(ctypes.addressof(t) + ctypes.sizeof(_Type)).a
            name = self._name(_Type.from_address(b.btf__type_by_id(self._h, elem)).name_off)
            return "S" if name == "char" else self._kind(elem)
        if kind == BTF_KIND_INT:  # a u32 follows: encoding in bits 24-27, bit 24 = signed
            encoding = ctypes.c_uint32.from_address(ctypes.addressof(t) + ctypes.sizeof(_Type)).value >> 24
            return "i" if encoding & 1 else "u"
        return "V"

    def enum(self, name: str) -> dict[str, int]:
        """{enumerator: value} of `enum name`."""
        _, t = self._find(name, BTF_KIND_ENUM)
        signed = t.info >> 31  # kflag: the enum's type is signed
        base = ctypes.addressof(t) + ctypes.sizeof(_Type)
        out = {}
        for i in range(t.info & 0xFFFF):
            e = _Enumerator.from_address(base + i * ctypes.sizeof(_Enumerator))
            out[self._name(e.name_off)] = e.val if signed else e.val & 0xFFFFFFFF
        return out

    def datasec(self, name: str) -> dict[str, tuple[int, int]]:
        """{variable: (offset, size)} of a data section such as .rodata."""
        b = libbpf.lib()
        _, t = self._find(name, BTF_KIND_DATASEC)
        out = {}
        for v in self._entries(t):
            var = _Type.from_address(b.btf__type_by_id(self._h, v.a))
            out[self._name(var.name_off)] = (v.b, v.c)
        return out
