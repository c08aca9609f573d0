"""File events from the kernel (bpf/activity/file.c): real files, real processes, real mounts."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid

import pytest

from sensor.schema import unescape

from conftest import wait_for

WORKER = """
import os, sys
os.chdir(sys.argv[1])
{body}
"""


def run(cwd, body: str) -> int:
    """Runs `body` (Python) in a child with cwd set; returns the child's pid."""
    p = subprocess.run([sys.executable, "-c", WORKER.format(body=body), str(cwd)], check=True)
    return p.returncode or 0


def spawn(cwd, body: str) -> int:
    p = subprocess.Popen([sys.executable, "-c", WORKER.format(body=body), str(cwd)])
    assert p.wait(30) == 0
    return p.pid


@pytest.fixture
def watched(tmp_path, start_sensor):
    """A sensor watching tmp/w and tmp/pre* (a name prefix), excluding tmp/w/skip."""
    w = tmp_path / "w"
    (w / "skip").mkdir(parents=True)
    sensor = start_sensor("--files-paths", f"{w},{tmp_path}/pre*", "--files-exclude", str(w / "skip"),
                          "--no-metrics-enabled", "--rules", "none")
    sensor.dir = w
    return sensor


def file_events(sensor, pid=None):
    return [e for e in sensor.events(event__dataset="file") if pid is None or e["process"]["pid"] == pid]


def summary(events):
    return [(e["event"]["action"], e["file"]["path"], e["file"].get("original", {}).get("path"),
             e["file"].get("target_path")) for e in events]


def test_each_operation_gives_one_exact_event_with_its_actor(watched):
    w = watched.dir
    pid = spawn(w, """
import os
with open("a.txt", "w") as f:
    f.write("hello")
os.rename("a.txt", "b.txt")
os.chmod("b.txt", 0o600)
os.chown("b.txt", 1234, 5678)
os.link("b.txt", "hard")
os.symlink("b.txt", "soft")
os.truncate("b.txt", 1)
os.mkdir("dir")
os.rmdir("dir")
os.unlink("hard")
fd = os.open("skip/hidden", os.O_CREAT | os.O_WRONLY)
os.write(fd, b"x"); os.close(fd)
os.unlink("skip/hidden")
try:
    os.unlink("no-such-file")  # failed calls are not reported
except FileNotFoundError:
    pass
""")
    wait_for(lambda: any(e["event"]["action"] == "delete" for e in file_events(watched, pid)), what="file events")
    assert watched.stop() == 0
    evs = file_events(watched, pid)
    d = str(w)
    assert summary(evs) == [
        ("create", f"{d}/a.txt", None, None),
        ("write", f"{d}/a.txt", None, None),
        ("rename", f"{d}/b.txt", f"{d}/a.txt", None),
        ("chmod", f"{d}/b.txt", None, None),
        ("chown", f"{d}/b.txt", None, None),
        ("link", f"{d}/hard", None, f"{d}/b.txt"),
        ("symlink", f"{d}/soft", None, "b.txt"),
        ("truncate", f"{d}/b.txt", None, None),
        ("mkdir", f"{d}/dir", None, None),
        ("rmdir", f"{d}/dir", None, None),
        ("delete", f"{d}/hard", None, None),
    ]
    by = {e["event"]["action"]: e for e in evs}
    assert by["create"]["event"]["type"] == ["creation"] and by["delete"]["event"]["type"] == ["deletion"]
    assert by["create"]["file"]["type"] == "file" and by["mkdir"]["file"]["type"] == "dir"
    assert by["create"]["file"]["name"] == "a.txt" and by["create"]["file"]["extension"] == "txt"
    assert by["create"]["file"]["directory"] == d
    assert by["create"]["file"]["inode"] == str(os.stat(w / "b.txt").st_ino)  # renamed since, same inode
    assert by["chmod"]["file"]["mode"] == "0600"
    assert (by["chown"]["file"]["uid"], by["chown"]["file"]["gid"]) == ("1234", "5678")
    assert by["write"]["file"]["write_count"] == 1 and by["write"]["file"]["write_bytes"] == 5
    assert by["rename"]["file"]["original"]["name"] == "a.txt"
    # the actor is the worker process, the same entity its exec event has
    execs = [e for e in watched.events(event__dataset="process", event__action="exec") if e["process"]["pid"] == pid]
    assert execs, "the worker's exec event"
    assert {e["process"]["entity_id"] for e in evs} == {execs[-1]["process"]["entity_id"]}
    assert all(e["process"]["executable"] == execs[-1]["process"]["executable"] for e in evs)
    assert all(e["event"]["module"] == "ebpf" for e in evs)


def test_name_prefix_and_exclusions(watched, tmp_path):
    (tmp_path / "prefixed").mkdir()
    (tmp_path / "other").mkdir()
    pid = spawn(tmp_path, """
open("prefixed/in", "w").close()
open("pre-file", "w").close()
open("other/out", "w").close()
""")
    wait_for(lambda: len(file_events(watched, pid)) >= 2, what="file events")
    assert watched.stop() == 0
    assert sorted(e["file"]["path"] for e in file_events(watched, pid)) == [
        f"{tmp_path}/pre-file", f"{tmp_path}/prefixed/in"]
    # the sensor's own data dir is never watched, even when it lies under a watched path
    assert not [e for e in file_events(watched) if e["file"]["path"].startswith(str(watched.data_dir))]


def test_write_storm_is_folded_and_every_write_counted(watched):
    n = 100_000
    pid = spawn(watched.dir, f"""
import os, time
fd = os.open("storm.log", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
for i in range({n}):
    os.write(fd, b"x")
os.close(fd)
""")
    wait_for(lambda: any(e["file"].get("write_count") and e["file"]["path"].endswith("storm.log")
                         and e["process"]["pid"] == pid and e["event"]["action"] == "write"
                         for e in file_events(watched, pid)) and watched.proc.poll() is None, what="writes")
    assert watched.stop() == 0
    writes = [e for e in file_events(watched, pid) if e["event"]["action"] == "write"]
    assert 1 <= len(writes) <= 10, len(writes)
    assert sum(e["file"]["write_count"] for e in writes) == n  # folded, none lost
    assert sum(e["file"]["write_bytes"] for e in writes) == n


def test_hostile_names_long_paths_symlinks_and_bind_mounts(watched, tmp_path):
    w = watched.dir
    real = w / "real"
    real.mkdir()
    os.symlink(real, w / "via-link")
    bind = w / "bind"
    bind.mkdir()
    src = tmp_path / "outside"
    src.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(bind)], check=True)
    try:
        # 4096-byte paths need many components (a name is at most 255 bytes)
        deep = "/".join(["d" * 200] * 19)
        pid = spawn(w, f"""
import os
open(b"new\\nline", "w").close()
open(b"bad\\xff\\xfebytes", "w").close()
open("via-link/through", "w").close()
open("bind/mounted", "w").close()
os.makedirs({deep!r})
os.chdir({deep!r})
open("leaf", "w").close()
""")
        wait_for(lambda: any(e["file"]["name"] == "leaf" for e in file_events(watched, pid)), what="the deep file")
    finally:
        subprocess.run(["umount", str(bind)], check=True)
    assert watched.stop() == 0
    evs = {e["file"]["name"]: e for e in file_events(watched, pid) if e["event"]["action"] == "create"}
    assert evs["new\nline"]["file"]["path"] == f"{w}/new\nline"
    bad = [e for n, e in evs.items() if n.startswith("bad")][0]
    assert unescape(bad["file"]["path"]) == os.fsencode(f"{w}/") + b"bad\xff\xfebytes"
    assert "file.path" in bad["sensor"]["escaped"]
    # opened files are named as the kernel resolved them: the symlink's target, the bind mount's path
    assert evs["through"]["file"]["path"] == f"{real}/through"
    assert evs["mounted"]["file"]["path"] == f"{bind}/mounted"
    leaf = evs["leaf"]
    full = f"{w}/{deep}/leaf"
    assert len(full) > 3800
    if leaf.get("sensor", {}).get("truncated"):
        assert full.endswith(leaf["file"]["path"].lstrip("/"))
    else:
        assert leaf["file"]["path"] == full


def test_exec_of_a_file_written_since_start_is_flagged(watched):
    tag = uuid.uuid4().hex[:8]
    binary = watched.dir / f"dropped-{tag}"
    binary.write_bytes(open(os.path.realpath("/bin/true"), "rb").read())  # an ELF: flagged by inode
    binary.chmod(0o755)
    script = watched.dir / f"dropped-{tag}.sh"  # a script: its exe_file is /bin/sh, matched by name
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    for cmd in (binary, script, "/bin/true"):
        subprocess.run([str(cmd)], check=True)
    wait_for(lambda: [e for e in watched.events(event__dataset="process", event__action="exec")
                      if e["process"]["executable"] == os.path.realpath("/bin/true")], what="exec events")
    assert watched.stop() == 0
    execs = watched.events(event__dataset="process", event__action="exec")
    flagged = {e["process"].get("filename", e["process"]["executable"]): e["process"].get("executable_written")
               for e in execs}
    assert flagged[str(binary)] is True
    # made executable: hashed in user space, as the file is now
    import hashlib
    [chmod] = [e for e in file_events(watched) if e["event"]["action"] == "chmod" and e["file"]["path"] == str(binary)]
    assert chmod["file"]["hash"]["sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert not [e for e in file_events(watched) if e["file"]["path"] == str(binary) and
                e["event"]["action"] == "create" and "hash" in e["file"]]  # not executable yet: not hashed
    assert flagged[str(script)] is True
    true = [e for e in execs if e["process"]["executable"] == os.path.realpath("/bin/true")]
    assert true and not any(e["process"].get("executable_written") for e in true)


def test_an_over_long_prefix_is_a_clear_config_error(tmp_path):
    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path / "d"), "--console", "off",
                        "--duration", "1", "--files-paths", "/" + "a" * 300], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "a prefix longer than 256 bytes" in r.stderr and "Traceback" not in r.stderr
