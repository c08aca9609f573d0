"""Security-relevant syscalls (bpf/activity/security.c), each made for real by a helper process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import wait_for

HELPER = r"""
import ctypes, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tmp = sys.argv[1]

# ptrace: attach to a child, then let it go
child = subprocess.Popen(["sleep", "30"])
assert libc.ptrace(16, child.pid, None, None) == 0          # PTRACE_ATTACH
os.waitpid(child.pid, 0)
libc.ptrace(17, child.pid, None, None)                       # PTRACE_DETACH
child.kill(); child.wait()

# module load from a file that is no module: refused, still reported
with open(f"{tmp}/not-a-module.ko", "wb") as f:
    f.write(b"\0" * 64)
fd = os.open(f"{tmp}/not-a-module.ko", os.O_RDONLY)
libc.syscall(313, fd, b"answer=42", 0)                       # finit_module
os.close(fd)

libc.syscall(175, b"\0" * 64, 64, b"from=memory")             # init_module from memory: refused too

# capset: the capabilities we have, set again
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
assert libc.syscall(125, hdr, data) == 0                      # capget
assert libc.syscall(126, hdr, data) == 0                      # capset

# bpf(BPF_PROG_LOAD) with an empty attr: refused, still reported
attr = ctypes.create_string_buffer(128)
libc.syscall(321, 5, attr, 128)

# memfd_create
os.close(os.memfd_create("sensor-memfd-test"))

# unshare and setns on a UTS namespace
assert libc.unshare(0x04000000) == 0                         # CLONE_NEWUTS
fd = os.open(f"/proc/{os.getppid()}/ns/uts", os.O_RDONLY)  # back to the parent's
assert libc.setns(fd, 0x04000000) == 0
os.close(fd)

# mount and umount in a private mount namespace (so the host never sees it)
assert libc.unshare(0x00020000) == 0                         # CLONE_NEWNS
assert libc.mount(b"none", b"/", None, 0x40000 | 0x4000, None) == 0   # MS_PRIVATE | MS_REC
os.makedirs(f"{tmp}/mnt", exist_ok=True)
assert libc.mount(b"sensortmp", f"{tmp}/mnt".encode(), b"tmpfs", 0, None) == 0
assert libc.umount2(f"{tmp}/mnt".encode(), 0) == 0

# signals: to a process of another user (reported), and to one of our own (not)
other = subprocess.Popen(["sleep", "30"], user=65534)
mine = subprocess.Popen(["sleep", "30"])
time.sleep(0.2)
os.kill(other.pid, signal.SIGTERM)
os.kill(mine.pid, signal.SIGTERM)
other.wait(); mine.wait()
print(child.pid, other.pid, mine.pid, flush=True)

# uid and gid changes last: they drop root
os.setgid(65534)
os.setuid(65534)
"""


def test_each_security_syscall_is_reported(start_sensor, tmp_path):
    s = start_sensor("--no-metrics-enabled", "--rules", "none", "--no-files-enabled", "--no-network-enabled")
    tmp_path.chmod(0o755)
    p = subprocess.Popen([sys.executable, "-c", HELPER, str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    traced, other, mine = map(int, out.split())
    wait_for(lambda: any(e["event"]["action"] == "setuid" for e in s.events(event__dataset="security")),
             what="the last security event")
    assert s.stop() == 0
    evs = [e for e in s.events(event__dataset="security") if e["process"]["pid"] == p.pid]
    by = {}
    for e in evs:
        by.setdefault(e["event"]["action"], []).append(e)

    [ptrace] = by["ptrace"]
    assert ptrace["security"]["ptrace_request"] == "PTRACE_ATTACH"
    assert ptrace["target"]["process"]["pid"] == traced and ptrace["event"]["outcome"] == "success"

    [module] = by["finit_module"]
    assert module["file"]["path"] == f"{tmp_path}/not-a-module.ko"
    assert module["security"]["module_params"] == "answer=42"
    assert module["event"]["outcome"] == "failure" and module["event"]["category"] == ["driver"]

    [from_memory] = by["init_module"]
    assert from_memory["security"]["module_params"] == "from=memory" and "file" not in from_memory
    [capset] = by["capset"]
    assert capset["event"]["outcome"] == "success" and capset["event"]["type"] == ["change"]

    [bpf] = by["bpf"]
    assert bpf["security"]["bpf_command"] == "BPF_PROG_LOAD" and bpf["event"]["outcome"] == "failure"

    [memfd] = by["memfd_create"]
    assert memfd["file"]["name"] == "sensor-memfd-test" and memfd["event"]["outcome"] == "success"

    assert [e["security"]["namespaces"] for e in by["unshare"]] == [["uts"], ["mnt"]]
    [setns] = by["setns"]
    assert setns["security"]["namespaces"] == ["uts"]

    mounts = [e["security"]["mount"] for e in by["mount"]]
    assert {"source": "sensortmp", "target": f"{tmp_path}/mnt", "fstype": "tmpfs", "flags": 0} in mounts
    assert any(e["security"]["mount"].get("target") == f"{tmp_path}/mnt" for e in by["umount2"])

    kills = by["kill"]
    assert [k["target"]["process"]["pid"] for k in kills] == [other]  # not `mine`: same user
    assert kills[0]["security"]["signal"] == {"number": signal.SIGTERM, "name": "SIGTERM"}
    assert kills[0]["target"]["user"]["id"] == "65534"

    assert [e["user"]["changes"]["id"] for e in by["setuid"]] == ["65534"]
    assert [e["security"]["gid"] for e in by["setgid"]] == ["65534"]
    # the actor is the helper, as the process cache knows it (its exec event has the same entity)
    [exec_event] = [e for e in s.events(event__dataset="process", event__action="exec") if e["process"]["pid"] == p.pid]
    assert {e["process"]["entity_id"] for e in evs} == {exec_event["process"]["entity_id"]}
    # the child that subprocess turned into user 65534 before its exec is seen too
    assert any(e["user"].get("changes", {}).get("id") == "65534" for e in s.events(event__action="setreuid")
               if e["process"]["pid"] == other)
