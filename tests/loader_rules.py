"""What LID-DS's own loaders require of a folder, checked the way they read it (written from their behaviour).

Rules taken from LID-DS/LID-DS `dataloader/`: `dataloader_factory.py` (which loader a folder gets),
`data_loader_2021.py` + `recording_2021.py` + `syscall_2021.py` (LID-DS 2021 scenarios) and
`dataloader_adfa_ld.py` + `recording_adfa_ld.py` (ADFA-LD). Each helper fails with an
AssertionError that says which rule a folder breaks.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import zipfile
from pathlib import Path

LIDDS_MEMBERS = (".sc", ".json", ".res", ".pcap")


def factory_kind(scenario: Path) -> str:
    """The loader the factory picks: "2021" or "adfa"; AssertionError where it raises ValueError."""
    names = sorted(os.listdir(scenario))
    assert "runs.csv" not in names, "runs.csv: the factory would take it for LID-DS 2019"
    assert names, f"{scenario} is empty"
    # only the first name, sorted, is looked at: it must be a folder name without extension
    assert os.path.splitext(names[0])[1] == "", f"first entry {names[0]!r} has an extension: rejected"
    normal = scenario / "test" / "normal"
    if normal.is_dir():
        entries = os.listdir(normal)
        assert entries, "test/normal is empty: the factory reads its first entry"
        # whichever entry the directory listing returns first is read: all must be .zip
        others = [e for e in entries if os.path.splitext(e)[1] != ".zip"]
        assert not others, f"test/normal holds {others}: rejected when listed first"
        return "2021"
    assert (scenario / "Attack_Data_Master").is_dir(), "neither test/normal nor Attack_Data_Master"
    return "adfa"


def recording_type(meta: dict) -> str:
    normal = any(c["role"] == "normal" for c in meta["container"])
    return {(True, False): "NORMAL", (True, True): "NORMAL_AND_ATTACK",
            (False, True): "ATTACK", (False, False): "IDLE"}[(normal, bool(meta["exploit"]))]


def lidds_recordings(scenario: Path) -> list[dict]:
    """Every recording as DataLoader2021 would list it: category, type, metadata and .sc lines split."""
    zips = []
    for folder, pattern in (("training", "training/*.zip"), ("validation", "validation/*.zip"),
                            ("test", "test/*/*.zip")):
        zips += [(folder, p) for p in glob.glob(f"{scenario}/{pattern}")]
    out = []
    for folder, path in zips:
        name = os.path.splitext(os.path.basename(path))[0]
        # the category is the first of these words found anywhere in the zip's folder path
        category = next((w for w in ("training", "validation", "test") if w in os.path.dirname(path)), None)
        assert category == folder, f"{path}: the loader files it under {category}, not {folder}"
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            assert len(members) == 4 and set(members) == {name + e for e in LIDDS_MEMBERS}, members
            # metadata() swaps every ' for " before parsing
            meta = json.loads(z.read(name + ".json").decode("utf-8").replace("'", '"'))
            with z.open(name + ".sc") as sc:
                lines = [sc_fields(raw.decode("utf-8").rstrip()) for raw in sc]
            rows = list(csv.reader(z.read(name + ".res").decode("utf-8").split("\n")))
        assert rows[0][0] == "timestamp" and all(len(r) == 7 for r in rows[1:] if r), rows[:2]
        out.append({"category": category, "folder": os.path.relpath(os.path.dirname(path), scenario),
                    "name": name, "path": path, "type": recording_type(meta), "meta": meta, "lines": lines})
    for category in ("training", "validation", "test"):
        names = [r["name"] for r in out if r["category"] == category]
        # recordings are keyed by name per category: a repeated name hides a recording
        assert len(names) == len(set(names)), f"{category}: repeated recording names"
    return out


def sc_fields(line: str) -> dict:
    """One .sc line as Syscall2021 reads it: split on single spaces, params split on the first '='."""
    f = line.split(" ")
    assert len(f) >= 7 and f[6] in (">", "<"), line
    params = {}
    for p in f[7:]:
        assert "=" in p, f"parameter without '=': {p!r} in {line!r}"
        k, v = p.split("=", 1)
        params[k] = v
    return {"ts": int(f[0]), "uid": int(f[1]), "pid": int(f[2]), "comm": f[3], "tid": int(f[4]),
            "syscall": f[5], "dir": f[6], "params": params}


def adfa_recordings(root: Path, val_count: int, val_train_add: int, attack: str | None = None) -> dict:
    """DataLoaderADFALD's three lists of (path, contains_attack, syscall ids) for those arguments."""
    def txt(d):
        return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".txt")]

    val = sorted(txt(root / "Validation_Data_Master"))
    attack_dir = root / "Attack_Data_Master"
    subs = [d for d in os.listdir(attack_dir) if attack is None or d.startswith(attack)]
    attacks = [p for d in subs for p in txt(attack_dir / d)]  # a plain file here would raise
    lists = {"training": txt(root / "Training_Data_Master") + val[:val_train_add],
             "validation": val[val_train_add:val_train_add + val_count],
             "test": val[val_count + val_train_add:] + attacks}
    return {k: [(p, "Attack_Data_Master" in p, Path(p).read_text().strip().split(" ")) for p in v]
            for k, v in lists.items()}

