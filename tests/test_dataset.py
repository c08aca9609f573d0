"""Dataset export from real traces, checked against the ADFA-LD and LID-DS 2021 layout rules."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from loader_rules import adfa_recordings, factory_kind, lidds_recordings
from sensor.dataset import load_run, split_runs


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


def source_table(trace: Path):
    return pq.read_table(load_run(trace).parquet)


def per_process(trace: Path) -> dict[int, list[int]]:
    t = source_table(trace).sort_by("timestamp_ns")
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
        want = source_table(src).to_pylist()
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
    # LID-DS's ADFA-LD loader, given the arguments the manifest names, finds each file where we put it
    assert factory_kind(tmp_path) == "adfa"
    loaded = adfa_recordings(tmp_path, **manifest["loader"])
    want = {"training": set(), "validation": set(), "test": set()}
    for run in manifest["runs"]:
        for out in run["outputs"]:
            want["test" if run["split"] == "attack" else run["split"]].add((str(tmp_path / out["path"]),
                                                                              run["split"] == "attack"))
    assert {k: {(p, a) for p, a, _ in v} for k, v in loaded.items()} == want
    assert loaded["validation"] and all(k[2] != [""] for v in loaded.values() for k in v)
    # the loader's attack filter is a folder-name prefix
    only = adfa_recordings(tmp_path, **manifest["loader"], attack="Web_Shell")["test"]
    assert {p.split("/")[-2] for p, a, _ in only if a} == {"Web_Shell_1"}


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
    assert factory_kind(tmp_path) == "2021"
    loaded = lidds_recordings(tmp_path)
    # 6 normal runs at 0.7/0.15/0.15: 4 training, 1 validation, 1 normal test; 2 attacks
    assert Counter((r["folder"], r["type"]) for r in loaded) == {
        ("training", "NORMAL"): 4, ("validation", "NORMAL"): 1, ("test/normal", "NORMAL"): 1,
        ("test/normal_and_attack", "NORMAL_AND_ATTACK"): 2}
    zips = sorted(tmp_path.rglob("*.zip"))
    assert len(zips) == len(loaded)
    manifest = json.loads((tmp_path / "test" / "manifest.json").read_text())
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
        src = source_table(Path(run["source"])).to_pylist()
        enters = [ln.split(" ") for ln in lines if ln.split(" ")[6] == ">"]
        exits = [ln.split(" ") for ln in lines if ln.split(" ")[6] == "<"]
        assert len(enters) == len(src)
        assert len(exits) == len(src) - sum(s["syscall"] in ("exit", "exit_group") for s in src)
        stamps = [int(ln.split(" ")[0]) for ln in lines]
        assert stamps == sorted(stamps)
        assert all(p.split("=", 1)[0] == "res" for e in exits for p in e[7:])
        assert sorted((int(e[0]), int(e[4]), e[5]) for e in enters) == \
            sorted((s["timestamp_ns"], s["tid"], s["syscall"]) for s in src)


def test_adfa_sort_order_past_9999_files(traces, tmp_path):
    """LID-DS's ADFA-LD loader splits Validation_Data_Master by position in name order."""
    big = tmp_path / "forks"
    r = sensor("trace", "-o", str(big), "--label", "normal", "--",
               "/bin/sh", "-c", "i=0; while [ $i -lt 10000 ]; do (:); i=$((i+1)); done")
    assert r.returncode == 0, r.stderr
    srcs = [big, traces["normal0"]]
    shares = dict(train=0, validation=0.5, test=0.5)

    def big_in_validation(seed):
        runs = [load_run(p) for p in srcs]
        split_runs(runs, *shares.values(), seed)
        return runs[0].split == "validation"

    seed = next(s for s in range(20) if big_in_validation(s))
    out = tmp_path / "out"
    r = sensor("dataset", "export", *map(str, srcs), "--format", "adfa", "-o", str(out), "--seed", str(seed),
               "--allow-incomplete", *(x for k, v in shares.items() for x in (f"--{k}", str(v))))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["loader"]["val_count"] > 10000
    loaded = adfa_recordings(out, **m["loader"])
    want = {split: {str(out / o["path"]) for run in m["runs"] if run["split"] == split for o in run["outputs"]}
            for split in ("validation", "test")}
    assert {p for p, _, _ in loaded["validation"]} == want["validation"]
    assert {p for p, _, _ in loaded["test"]} == want["test"]


ODD_PATH = "/nonexistent/a b\t"


@pytest.fixture(scope="module")
def quoted_attack(tmp_path_factory):
    """An attack run with a quote in its name whose chdir path (a line's last value) ends in a tab."""
    out = tmp_path_factory.mktemp("quoted") / "quoted"
    r = sensor("trace", "-o", str(out), "--args", "--label", "attack:Bob's shell", "--",
               "/bin/sh", "-c", 'cd "$0" 2>/dev/null; true', ODD_PATH)
    assert r.returncode == 0, r.stderr
    return out


def test_lidds_three_normal_runs_fill_every_split(traces, quoted_attack, tmp_path):
    srcs = [traces[f"normal{i}"] for i in range(3)] + [quoted_attack]
    r = sensor("dataset", "export", *map(str, srcs), "--format", "lidds", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert factory_kind(tmp_path) == "2021"
    loaded = lidds_recordings(tmp_path)
    # 3 runs at 0.7/0.15/0.15 round to 2/0/1: every split with a share gets one
    assert sorted(r["folder"] for r in loaded) == ["test/normal", "test/normal_and_attack", "training",
                                                   "validation"]
    attack = next(r for r in loaded if r["type"] == "NORMAL_AND_ATTACK")
    assert attack["meta"]["exploit_name"] == "Bob's shell"
    # a value survives the loader's rstrip and split, whole after percent-decoding
    paths = {unquote(ln["params"]["path"]) for ln in attack["lines"] if ln["syscall"] == "chdir"
             and ln["dir"] == ">"}
    assert paths == {ODD_PATH}


@pytest.mark.parametrize("fmt", ["lidds", "adfa"])
def test_too_few_normal_runs(traces, tmp_path, fmt):
    srcs = [str(traces["normal0"]), str(traces["adduser"])]
    out = tmp_path / "out"
    r = sensor("dataset", "export", *srcs, "--format", fmt, "-o", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "at least 3 normal runs, got 1" in r.stderr and "--allow-incomplete" in r.stderr
    assert not out.exists()
    six = [str(traces[f"normal{i}"]) for i in range(6)]
    r = sensor("dataset", "export", *six, "--format", fmt, "-o", str(out),
               "--train", "0.85", "--validation", "0", "--test", "0.15")
    assert r.returncode == 2 and "--validation 0 leaves" in r.stderr, r.stderr
    r = sensor("dataset", "export", *srcs, "--format", fmt, "-o", str(out), "--allow-incomplete")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "validation" in r.stderr
    if fmt == "lidds":
        assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()} == {
            "training", "validation", "test", "test/normal", "test/normal_and_attack"}
        # DataLoader2021 reads it; the factory does not (test/normal is empty), as the warning says
        assert Counter(r["folder"] for r in lidds_recordings(out)) == {"training": 1, "test/normal_and_attack": 1}
        with pytest.raises(AssertionError, match="test/normal is empty"):
            factory_kind(out)
        assert "dataloader_factory" in r.stderr
    else:
        assert factory_kind(out) == "adfa"
        loaded = adfa_recordings(out, **json.loads((out / "manifest.json").read_text())["loader"])
        assert loaded["training"] and not loaded["validation"] and all(a for _, a, _ in loaded["test"])


def test_lidds_warns_of_split_words_in_its_path(traces, tmp_path):
    out = tmp_path / "validation-sets" / "scenario"
    r = sensor("dataset", "export", *(str(traces[f"normal{i}"]) for i in range(3)), "--format", "lidds",
               "-o", str(out))
    assert r.returncode == 0, r.stderr
    # DataLoader2021 files test/ recordings by the first split word anywhere in their folder path
    with pytest.raises(AssertionError, match="files it under validation"):
        lidds_recordings(out)
    assert "warning" in r.stderr and "'validation'" in r.stderr


def test_adfa_warns_of_attack_folder_in_its_path(traces, tmp_path):
    out = tmp_path / "Attack_Data_Master" / "set"
    r = sensor("dataset", "export", *(str(traces[f"normal{i}"]) for i in range(3)), "--format", "adfa",
               "-o", str(out))
    assert r.returncode == 0, r.stderr
    # the loader flags a file as an attack by that folder name anywhere in its path
    loaded = adfa_recordings(out, **json.loads((out / "manifest.json").read_text())["loader"])
    assert loaded["training"] and all(a for _, a, _ in loaded["training"])
    assert "warning" in r.stderr and "'Attack_Data_Master'" in r.stderr


def test_not_a_trace_dir(tmp_path):
    r = sensor("dataset", "export", str(tmp_path), "--format", "adfa", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a trace directory" in r.stderr


def test_export_skips_a_torn_last_line_of_processes(tmp_path):
    """A killed trace can end processes.jsonl mid-line: read as it is, that line is skipped and
    counted; the user ids of the whole lines still reach LID-DS's .sc lines."""
    src = tmp_path / "nobody"
    r = sensor("trace", "-o", str(src), "--label", "normal", "--",
               "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/true")
    assert r.returncode == 0, r.stderr
    procs = src / "processes.jsonl"
    with open(procs, "ab") as f:
        f.write(b'{"event":{"kind":"event","category":["proc')
    out = tmp_path / "out"
    r = sensor("dataset", "export", str(src), "--format", "lidds", "-o", str(out), "--allow-incomplete")
    assert r.returncode == 0, r.stderr
    assert "processes.jsonl: its torn last line was skipped" in r.stderr
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    assert manifest["runs"][0]["torn_lines"] == 1
    (z,) = out.rglob("*.zip")
    with zipfile.ZipFile(z) as f:
        lines = f.read(f"{z.stem}.sc").decode().splitlines()
    assert lines and {ln.split(" ")[1] for ln in lines} == {"65534"}  # the exec after setpriv

    # a line that is not JSON before the last one is damage, not a kill: named, not skipped
    procs.write_bytes(b"{\n" + procs.read_bytes() + b"\n")
    r = sensor("dataset", "export", str(src), "--format", "lidds", "-o", str(tmp_path / "o2"), "--allow-incomplete")
    assert r.returncode == 2 and f"{procs}:1: invalid JSON" in r.stderr and "Traceback" not in r.stderr
