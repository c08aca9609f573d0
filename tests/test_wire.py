"""sensor/wire.py must agree with bpf/sensor.h as compiled: checked on the object's BTF."""
from pathlib import Path

import pytest

from sensor import wire
from sensor.linux.btf import Btf

OBJECT = Path(wire.__file__).parent / "bpf" / "process.bpf.o"


@pytest.fixture(scope="module")
def btf():
    with Btf.from_file(OBJECT) as b:
        yield b


def flatten(btf, name, prefix=""):
    """C members as {name: (offset, size)}, nested header struct inlined."""
    size, members = btf.struct(name)
    out = {}
    for member, (off, msize) in members.items():
        if member == "hdr":
            out.update(flatten(btf, "event_header")[1])
        elif member != "data":  # the flexible array: starts at sizeof(struct)
            out[member] = (off, msize)
    return size, out


@pytest.mark.parametrize("name", sorted(wire.STRUCTS))
def test_layout_matches_btf(btf, name):
    dtype = wire.STRUCTS[name]
    size, members = flatten(btf, name)
    assert dtype.itemsize == size, f"struct {name}: C {size} bytes, Python {dtype.itemsize}"
    py = {f: (dtype.fields[f][1], dtype.fields[f][0].itemsize) for f in dtype.names}
    assert py == members


def test_exec_data_starts_at_struct_end(btf):
    _, members = btf.struct("exec_event")
    assert members["data"][0] == wire.exec_event.itemsize


def test_rodata_options_exist(btf):
    opts = btf.datasec(".rodata")
    assert set(opts) >= {"wakeup_bytes", "trace_threads"}
    assert opts["wakeup_bytes"][1] == 8
