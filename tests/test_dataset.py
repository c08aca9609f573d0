"""Dataset export from real traces, checked against the ADFA-LD and LID-DS 2021 layout rules."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import ROOT


def sensor(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Real traces: six normal runs, two attack runs of two kinds, one with another label."""
    root = tmp_path_factory.mktemp("traces")
    made = {}
    plan = [(f"normal{i}", "normal", ["/bin/sh", "-c", f"echo {i} > /dev/null; /bin/true"]) for i in range(6)]
    plan += [("adduser", "attack:Adduser", ["/bin/sh", "-c", "id > /dev/null"]),
             ("webshell", "attack:Web_Shell", ["/bin/cat", "/etc/hostname"]),
             ("odd", "benchmark-run", ["/bin/true"])]
    for name, label, cmd in plan:
        r = sensor("trace", "-o", str(root / name), "--args", "--label", label, "--", *cmd)
        assert r.returncode == 0, r.stderr
        made[name] = root / name
    return made


def per_process(trace: Path) -> dict[int, list[int]]:
    t = pq.read_table(trace / "syscalls.parquet").sort_by("timestamp_ns")
    out: dict[int, list[int]] = {}
    for pid, nr in zip(t["pid"].to_pylist(), t["syscall_nr"].to_pylist()):
        out.setdefault(pid, []).append(nr)
    return out


def test_info(traces):
    r = sensor("dataset", "info", str(traces["webshell"]), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rows = pq.read_table(traces["webshell"] / "syscalls.parquet")
    assert d["rows"] == rows.num_rows and d["label"] == "attack:Web_Shell"
    assert d["sha256"] == hashlib.sha256((traces["webshell"] / "syscalls.parquet").read_bytes()).hexdigest()
    assert sum(d["syscalls"].values()) <= d["rows"] and "execve" in d["syscalls"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tabular_round_trip(traces, tmp_path, fmt):
    srcs = [traces["normal0"], traces["adduser"], traces["odd"]]
    r = sensor("dataset", "export", *map(str, srcs), "--format", fmt, "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = (pq.read_table(tmp_path / "dataset.parquet") if fmt == "parquet"
           else pacsv.read_csv(tmp_path / "dataset.csv")).to_pylist()
    for src in srcs:
        want = pq.read_table(src / "syscalls.parquet").to_pylist()
        got = [row for row in out if row["run"] == src.name]
        # CSV cannot tell an empty path (AT_EMPTY_PATH) from none: compare both as ""
        norm = (lambda v: v or "") if fmt == "csv" else (lambda v: v)
        assert [(w["timestamp_ns"], w["tid"], w["syscall"], w["ret"], norm(w["path"])) for w in want] == \
               [(g["timestamp_ns"], g["tid"], g["syscall"], g["ret"], norm(g["path"])) for g in got]
    assert {row["label"] for row in out} == {"normal", "attack:Adduser", "benchmark-run"}
    assert {row["split"] for row in out if row["label"] == "benchmark-run"} == {"other"}


def test_adfa_layout(traces, tmp_path):
    r = sensor("dataset", "export", *map(str, traces.values()), "--format", "adfa", "-o", str(tmp_path),
               "--train", "0.5", "--validation", "0.25", "--test", "0.25", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"Training_Data_Master", "Validation_Data_Master",
                                                    "Attack_Data_Master", "manifest.json"}
    train = sorted((tmp_path / "Training_Data_Master").iterdir())
    val = sorted((tmp_path / "Validation_Data_Master").iterdir())
    assert [p.name for p in train] == [f"UTD-{i:04d}.txt" for i in range(1, len(train) + 1)]
    assert [p.name for p in val] == [f"UVD-{i:04d}.txt" for i in range(1, len(val) + 1)]
    attacks = sorted(p.name for p in (tmp_path / "Attack_Data_Master").iterdir())
    assert attacks == ["Adduser_1", "Web_Shell_1"]
    for folder in (tmp_path / "Attack_Data_Master").iterdir():
        name, k = folder.name.rsplit("_", 1)
        for f in folder.iterdir():
            assert re.fullmatch(rf"UAD-{name.replace('_', '-')}-{k}-\d+\.txt", f.name), f.name
    # every file: one line of space-separated numbers, read the way ADFA loaders read it
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for run in manifest["runs"]:
        expected = per_process(Path(run["source"]))
        for out in run["outputs"]:
            text = (tmp_path / out["path"]).read_text()
            assert text.count("\n") == 1
            assert [int(x) for x in text.strip().split(" ")] == expected[out["pid"]]
            assert out["sha256"] == hashlib.sha256((tmp_path / out["path"]).read_bytes()).hexdigest()
    splits = [run["split"] for run in manifest["runs"] if run["label"] == "normal"]
    # 6 normal runs at 0.5/0.25/0.25: 3 training, round(1.5) = 2 validation, the last one test
    assert (splits.count("training"), splits.count("validation"), splits.count("test")) == (3, 2, 1)
    assert [s["label"] for s in manifest["skipped"]] == ["benchmark-run"]


def test_split_is_proportional_and_seeded(traces, tmp_path):
    normal = [str(p) for n, p in traces.items() if n.startswith("normal")]

    def splits(seed):
        out = tmp_path / f"s{seed}"
        assert sensor("dataset", "export", *normal, "--format", "adfa", "-o", str(out),
                      "--train", "0.5", "--validation", "0.34", "--test", "0.16", "--seed", str(seed)).returncode == 0
        m = json.loads((out / "manifest.json").read_text())
        return {r["source"]: r["split"] for r in m["runs"]}

    a, b = splits(1), splits(1)
    assert a == b
    counts = sorted(list(a.values()).count(s) for s in ("training", "validation", "test"))
    assert counts == [1, 2, 3]
    assert any(splits(seed) != a for seed in range(2, 8))
    bad = sensor("dataset", "export", *normal, "--format", "adfa", "-o", str(tmp_path / "x"),
                 "--train", "0.9", "--validation", "0.3", "--test", "0")
    assert bad.returncode == 2 and "add up to 1" in bad.stderr


def test_lidds_layout(traces, tmp_path):
    r = sensor("dataset", "export", *map(str, traces.values()), "--format", "lidds", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    zips = sorted(tmp_path.rglob("*.zip"))
    folders = {str(z.parent.relative_to(tmp_path)) for z in zips}
    assert folders <= {"training", "validation", "test/normal", "test/normal_and_attack"}
    assert "test/normal_and_attack" in folders and "training" in folders
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    by_zip = {out["path"]: run for run in manifest["runs"] for out in run["outputs"]}
    for z in zips:
        name = z.stem
        with zipfile.ZipFile(z) as f:
            assert sorted(f.namelist()) == sorted(f"{name}{ext}" for ext in (".sc", ".json", ".res", ".pcap"))
            meta = json.loads(f.read(f"{name}.json"))
            lines = f.read(f"{name}.sc").decode().splitlines()
            res = f.read(f"{name}.res").decode().splitlines()
            pcap = f.read(f"{name}.pcap")
        assert res[0].split(",")[0] == "timestamp" and pcap[:4] == b"\xd4\xc3\xb2\xa1"
        run = by_zip[str(z.relative_to(tmp_path))]
        attack = run["label"].startswith("attack:")
        # LID-DS 2021's own rule for the recording type
        normal_role = any(c["role"] == "normal" for c in meta["container"])
        assert normal_role and meta["exploit"] is attack
        assert (z.parent.name == "normal_and_attack") is attack
        if attack:
            assert meta["exploit_name"] == run["label"][7:] and meta["time"]["exploit"][0]["absolute"] > 0
        assert {"image", "recording_time", "time"} <= set(meta)
        # .sc lines as LID-DS splits them: ts uid pid name tid syscall direction params...
        src = pq.read_table(Path(run["source"]) / "syscalls.parquet").to_pylist()
        enters = [ln.split(" ") for ln in lines if ln.split(" ")[6] == ">"]
        exits = [ln.split(" ") for ln in lines if ln.split(" ")[6] == "<"]
        assert len(enters) == len(src)
        assert len(exits) == len(src) - sum(s["syscall"] in ("exit", "exit_group") for s in src)
        stamps = [int(ln.split(" ")[0]) for ln in lines]
        assert stamps == sorted(stamps)
        assert all(p.split("=", 1)[0] == "res" for e in exits for p in e[7:])
        assert sorted((int(e[0]), int(e[4]), e[5]) for e in enters) == \
            sorted((s["timestamp_ns"], s["tid"], s["syscall"]) for s in src)


def test_not_a_trace_dir(tmp_path):
    r = sensor("dataset", "export", str(tmp_path), "--format", "adfa", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a trace directory" in r.stderr
