"""sensor/wire.py must agree with bpf/sensor.h as compiled: checked on the object's BTF."""
import re
from pathlib import Path

import numpy as np
import pytest

from sensor import wire
from sensor.linux.btf import Btf

HEADER = Path(__file__).resolve().parent.parent / "bpf" / "sensor.h"
OBJECTS = sorted((Path(wire.__file__).parent / "bpf").glob("*.bpf.o"))


@pytest.fixture(scope="module", params=[p.name for p in OBJECTS if p.name in ("process.bpf.o", "trace.bpf.o", "activity.bpf.o")])
def btf(request):
    with Btf.from_file(Path(wire.__file__).parent / "bpf" / request.param) as b:
        yield b


def flatten(btf, name):
    """C members as {name: (offset, size, numpy kind)}, nested header struct inlined."""
    size, members = btf.struct(name)
    kinds = btf.kinds(name)
    out = {}
    for member, (off, msize) in members.items():
        if member == "hdr":
            out.update(flatten(btf, "event_header")[1])
        elif member == "sc":
            out.update(flatten(btf, "syscall_event")[1])
        elif member != "data":  # the flexible array: starts at sizeof(struct)
            out[member] = (off, msize, kinds[member])
    return size, out


def py_kind(field: np.dtype) -> str:
    """A dtype field's kind as BTF's: "V" for a nested struct, raw bytes (V) as unsigned bytes."""
    return "V" if field.base.names else "u" if field.base.kind == "V" else field.base.kind


@pytest.mark.parametrize("name", sorted(wire.STRUCTS))
def test_layout_matches_btf(btf, name):
    """Sizes, offsets and kinds: a char array (S, read up to its NUL) is never a byte array (V),
    and signed stays signed."""
    dtype = wire.STRUCTS[name]
    size, members = flatten(btf, name)
    assert dtype.itemsize == size, f"struct {name}: C {size} bytes, Python {dtype.itemsize}"
    py = {f: (dtype.fields[f][1], dtype.fields[f][0].itemsize, py_kind(dtype.fields[f][0])) for f in dtype.names}
    assert py == members


def test_exec_data_starts_at_struct_end(btf):
    _, members = btf.struct("exec_event")
    assert members["data"][0] == wire.exec_event.itemsize


OPTIONS = {
    "process.bpf.o": {"wakeup_bytes", "trace_threads", "only_traced", "follow_forks"},
    "trace.bpf.o": {"wakeup_bytes", "filter_syscalls", "with_args", "nr_exit", "nr_exit_group"},
    "activity.bpf.o": {"wakeup_bytes", "file_on", "net_on", "security_on", "write_interval_ns", "flow_interval_ns",
                       "nr_accept", "nr_sendto", "nr_recvmsg"},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_rodata_options_exist(name):
    with Btf.from_file(Path(wire.__file__).parent / "bpf" / name) as b:
        opts = b.datasec(".rodata")
    assert set(opts) >= OPTIONS[name]
    assert opts["wakeup_bytes"][1] == 8


def header_enums() -> dict[str, list[str]]:
    """The header's enums as written: {enum name: [enumerator, ...]}."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    return {name: re.findall(r"^\s*(\w+)\s*=", body, re.M)
            for name, body in re.findall(r"\benum\s+(\w+)\s*\{(.*?)\}", text, re.S)}


# Python names that are not header constants: the bitmap's size (max_entries set by the loader);
# TASK_COMM_LEN is the kernel's (vmlinux.h), checked as the size of the comm fields.
PYTHON_ONLY = {"TRACE_BITS_WORDS", "TASK_COMM_LEN"}


def test_header_numbers_are_enums():
    """A #define never reaches BTF, so every number Python mirrors is an enum value."""
    defines = re.findall(r"^#define[ \t]+(\w+)[ \t]+\S", HEADER.read_text(), re.M)
    assert defines == [], f"make these enum values in bpf/sensor.h: {defines}"


def test_enums_match_btf(btf):
    """Every enum of the header reaches the object's BTF (through struct wire_enums), and each of
    its values equals sensor/wire.py's constant of the same name."""
    enums = header_enums()
    assert len(enums) > 10
    wrong = {}
    for name, written in enums.items():
        try:
            values = btf.enum(name)
        except KeyError:
            pytest.fail(f"enum {name} is not in the BTF: add it to struct wire_enums in bpf/sensor.h")
        assert list(values) == written
        wrong.update({k: (v, getattr(wire, k, None)) for k, v in values.items() if getattr(wire, k, None) != v})
    assert wrong == {}, "C value, Python value"


def test_python_constants_are_header_enums():
    """No constant in sensor/wire.py is left unchecked: each is a header enum value."""
    py = {k for k, v in vars(wire).items() if k.isupper() and isinstance(v, int)}
    header = {e for values in header_enums().values() for e in values}
    assert py - header == PYTHON_ONLY


def test_comm_is_task_comm_len(btf):
    for name in ("exec_event", "fork_event", "exit_event", "tamper_event", "file_event", "net_event", "sec_event"):
        assert btf.struct(name)[1]["comm"][1] == wire.TASK_COMM_LEN


@pytest.mark.parametrize("name", ["exec_event", "fork_event", "exit_event", "net_event"])
def test_reader_reads_each_field_where_ctypes_does(name):
    """wire.reader (the hot decoders' struct unpack) agrees with the ctypes struct field by field,
    in any order asked, on a record whose every scalar and byte string holds a distinct value."""
    dtype = wire.STRUCTS[name]
    rec = np.zeros(1, dtype)
    picked = []
    for i, f in enumerate(dtype.names):
        sub = dtype.fields[f][0]
        if sub.shape or sub.names:
            continue
        if sub.kind in "SV":
            rec[f] = bytes([65 + i % 26]) * (sub.itemsize - 1)
        else:
            rec[f] = (i * 2654435761 + 7) % (1 << (8 * sub.itemsize - 1))
        picked.append(f)
    raw = rec.tobytes()
    c = wire.CTYPES[name].from_buffer_copy(raw)
    for fields in (tuple(picked), tuple(reversed(picked)), tuple(picked[1::2])):
        got = wire.reader(name, fields)(raw)
        # byte strings come whole, where ctypes cuts char arrays at the first NUL
        want = tuple(raw[dtype.fields[f][1]:dtype.fields[f][1] + dtype.fields[f][0].itemsize]
                     if dtype.fields[f][0].kind in "SV" else getattr(c, f) for f in fields)
        assert got == want
