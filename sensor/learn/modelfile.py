"""Model files (JSON, no code): training with a threshold from held-out normal runs, loading, scoring."""
from __future__ import annotations

from pathlib import Path

import orjson

from .. import __version__
from ..errors import SensorError
import numpy as np

from . import models
from .programs import PerProgram
from .runs import Run

FORMAT = "sensor-model"
VERSION = 2  # 2: per-program models, held-out scores
FOLDS = 5


class ModelError(SensorError):
    """A model cannot be trained, read or used; the message says why."""


METHODS = (*models.METHODS, "iforest")


def make(method: str, params: dict) -> PerProgram:
    if method == "iforest":
        from .forest import IForest  # scikit-learn: only when asked for

        return PerProgram(lambda: IForest(**params), method)
    if method not in models.METHODS:
        raise ModelError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return PerProgram(lambda: models.METHODS[method](**params), method)


def training_runs(runs: list[Run]) -> list[Run]:
    """Normal runs only; of a layout with splits (ADFA-LD, LID-DS), its training split only."""
    normal = [r for r in runs if r.kind == "normal"]
    if any(r.split for r in normal):
        normal = [r for r in normal if r.split in ("training", "")]
    return normal


def process_scores(model, run: Run) -> list[float]:
    return [p["score"] for p in model.score_run(run)]


def train(runs: list[Run], method: str, params: dict, q: float = 0.99) -> dict:
    """Fit on every normal run; the threshold is the q-quantile of the process scores each run gets
    from a model fitted without it (k folds by run), so it is set on data the model did not learn."""
    normal = training_runs(runs)
    if len(normal) < 2:
        raise ModelError(f"need at least 2 normal runs to train and choose a threshold, got {len(normal)} "
                         f"(of {len(runs)} runs given; attack and other labels are not learnt from)")
    folds = min(FOLDS, len(normal))
    held: list[float] = []
    for k in range(folds):
        part = make(method, params).fit([r for i, r in enumerate(normal) if i % folds != k])
        for r in normal[k::folds]:
            held += process_scores(part, r)
    model = make(method, params).fit(normal)
    return {"format": FORMAT, "version": VERSION, "method": method, "params": model.params,
            "threshold": max(models.quantile(held, q), model.floor),
            "threshold_rule": f"{q} quantile of {len(held)} held-out process scores ({folds}-fold by run)"
                              + (f", at least {model.floor:.4g} (one call out of place)" if model.floor else ""),
            # sorted, for a run's score: how rare its most anomalous process is among normal ones
            "held_out": sorted(round(h, 6) for h in held),
            "sensor_version": __version__,
            "training": [{"source": r.source, "label": r.label, "sha256": r.sha256, "layout": r.layout,
                          "processes": len(r.processes)} for r in normal],
            "state": model.state()}


def save(doc: dict, path) -> None:
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise ModelError(f"-o {path}: no such directory {path.parent}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    tmp.replace(path)


def load(path):
    """(the model's document, the fitted model) from a model file."""
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except orjson.JSONDecodeError as exc:
        raise ModelError(f"{path}: not a model file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path}: not a model file written by `sensor model train`")
    if doc.get("version", 0) > VERSION:
        raise ModelError(f"{path}: model format version {doc['version']} is newer than this sensor reads ({VERSION})")
    return load_doc(doc, path)


def load_doc(doc: dict, path="model"):
    """(the document, the fitted model) from a model's document."""
    try:
        return doc, make(doc["method"], doc["params"]).load(doc["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: damaged model file ({type(exc).__name__}: {exc})") from None


def run_score(scores: list[float], held: list[float] | None) -> float:
    """-log10 of the chance that a normal run of as many processes holds one scoring this high:
    each process's p-value is its rank among the held-out normal scores, the run's is the
    smallest, corrected for the number of processes (Sidak), so a run's score does not grow
    with its process count. Without held-out scores (version 1 files): the highest score."""
    if not scores:
        return 0.0
    if held is None:
        return max(scores)
    held = np.asarray(held)
    top = max(scores)
    beyond = len(held) - np.searchsorted(held, top, side="left")  # held-out scores >= it
    p = (1 + beyond) / (1 + len(held))
    if not beyond:  # past every held-out score: p keeps falling with the excess, so such runs are
        # still ordered (a few held-out scores would otherwise leave them all tied at 1/(N+1))
        p *= (1 + max(float(held[-1]) if len(held) else 0.0, 0.0)) / (1 + top)
    return float(-np.log10(-np.expm1(len(scores) * np.log1p(-p)))) if p < 1 else 0.0


def score(doc: dict, model, runs: list[Run], top: int = 10) -> list[dict]:
    """Each run's score (run_score) and its processes', highest first; a run is anomalous when a
    process of it is over the threshold."""
    out = []
    threshold = doc["threshold"]
    for r in runs:
        procs = sorted(model.score_run(r), key=lambda p: -p["score"])
        scores = [p["score"] for p in procs]
        out.append({"source": r.source, "label": r.label, "score": run_score(scores, doc.get("held_out")),
                    "max_process_score": scores[0] if scores else 0.0,
                    "anomalous": bool(scores) and scores[0] > threshold, "threshold": threshold,
                    "processes": [{**p, "anomalous": p["score"] > threshold} for p in procs[:top]]})
    return out
