"""Baseline detectors trained on real normal traces rank real attack-like traces above held-back normal ones."""
from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from learn_traces import record, sensor

TRAIN, HELD = 6, 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return record(tmp_path_factory.mktemp("learn"), TRAIN + HELD)


def scores(model, paths) -> dict[str, dict]:
    r = sensor("model", "score", str(model), *map(str, paths), "--json")
    assert r.returncode == 0, r.stderr
    return {json.loads(line)["source"]: json.loads(line) for line in r.stdout.splitlines()}


@pytest.mark.parametrize("method", ["stide", "ngram-freq"])
def test_attacks_rank_above_held_back_normal_runs(runs, tmp_path, method):
    train = [runs[f"normal{i}"] for i in range(TRAIN)]
    model = tmp_path / "model.json"
    r = sensor("model", "train", *map(str, train), runs["revshell"], "-o", str(model), "--method", method)
    assert r.returncode == 0, r.stderr
    doc = json.loads(model.read_text())
    assert doc["method"] == method and doc["params"]["n"] == {"stide": 6, "ngram-freq": 3}[method]
    # learnt from the normal runs only, each named by the hash of the data read
    assert sorted(t["sha256"] for t in doc["training"]) == sorted(
        hashlib.sha256((p / "syscalls.parquet").read_bytes()).hexdigest() for p in train)
    held = [runs[f"normal{i}"] for i in range(TRAIN, TRAIN + HELD)]
    attacks = [runs[k] for k in ("revshell", "download", "preload")]
    got = scores(model, held + attacks)
    normal = max(got[str(p)]["score"] for p in held)
    for p in attacks:
        assert got[str(p)]["score"] > normal, (p.name, got[str(p)]["score"], normal)
        assert got[str(p)]["anomalous"], p.name
    # the reverse shell's most anomalous process is the shell that connected out
    t = pq.read_table(runs["revshell"] / "syscalls.parquet", columns=["pid", "syscall"]).to_pylist()
    connected = {str(row["pid"]) for row in t if row["syscall"] == "connect"}
    assert got[str(runs["revshell"])]["processes"][0]["process"] in connected
    if method == "stide":  # and what it reports are windows the model never saw
        known = {tuple(w) for w in doc["state"]["windows"]}
        shown = [tuple(t["sequence"]) for proc in got[str(runs["download"])]["processes"] for t in proc["top"]]
        assert shown and not known & set(shown)


def test_model_file_is_plain_data_and_scores_the_same_when_read_back(runs, tmp_path):
    model = tmp_path / "m.json"
    r = sensor("model", "train", *(str(runs[f"normal{i}"]) for i in range(3)), "-o", str(model), "--n", "4")
    assert r.returncode == 0, r.stderr
    doc = json.loads(model.read_text())
    assert doc["format"] == "sensor-model" and doc["params"] == {"n": 4, "frame": 20}
    assert all(len(w) == 4 for w in doc["state"]["windows"]) and doc["threshold"] >= 0
    # a copy written by hand from the JSON alone scores exactly as the original
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(doc))
    assert scores(model, [runs["download"]]) == scores(copy, [runs["download"]])
    # the training runs themselves have every window in the model
    assert scores(model, [runs["normal0"]])[str(runs["normal0"])]["score"] == 0


def test_bad_input_is_one_line(runs, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    cases = [(("model", "score", str(junk), str(runs["normal0"])), "not a model file"),
             (("model", "score", str(tmp_path / "none.json"), str(runs["normal0"])), "no such model file"),
             (("model", "train", str(runs["revshell"]), "-o", str(tmp_path / "m.json")), "need at least 2 normal runs"),
             (("model", "train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.json")), "no such file"),
             (("model", "train", str(runs["normal0"]), str(runs["normal1"]), "-o", str(tmp_path / "m.json"),
               "--n", "9"), "--n 9")]
    for args, want in cases:
        r = sensor(*args)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "m.json").exists()
