"""sensor/wire.py must agree with bpf/sensor.h as compiled: checked on the object's BTF."""
from pathlib import Path

import pytest

from sensor import wire
from sensor.linux.btf import Btf

OBJECTS = sorted((Path(wire.__file__).parent / "bpf").glob("*.bpf.o"))


@pytest.fixture(scope="module", params=[p.name for p in OBJECTS if p.name in ("process.bpf.o", "trace.bpf.o", "activity.bpf.o")])
def btf(request):
    with Btf.from_file(Path(wire.__file__).parent / "bpf" / request.param) as b:
        yield b


def flatten(btf, name, prefix=""):
    """C members as {name: (offset, size)}, nested header struct inlined."""
    size, members = btf.struct(name)
    out = {}
    for member, (off, msize) in members.items():
        if member == "hdr":
            out.update(flatten(btf, "event_header")[1])
        elif member == "sc":
            out.update(flatten(btf, "syscall_event")[1])
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
