"""An isolation forest (scikit-learn) over per-process features, kept as its training data and seed."""
from __future__ import annotations

import numpy as np

from ..errors import SensorError
from . import features
from .runs import Process

TOP = 5
# Left out: on a shared, loaded machine times measure the load more than what a process does
TIMING = ("duration_s", "calls_per_s", "in_calls_ms", "per_s.execs", "per_s.file_opens", "per_s.net_connects")
# and the tree's shape within a run: it depends on how the run was launched, and a live process has no run
TREE = ("children", "depth", "descendants")
LEFT_OUT = frozenset((*features.META, *TIMING, *TREE))


def _sklearn():
    try:
        import sklearn
        from sklearn.ensemble import IsolationForest
    except ImportError:
        raise SensorError("the iforest method needs scikit-learn",
                          hint="pip install scikit-learn (or the package's [test] extra)") from None
    return sklearn.__version__, IsolationForest


class IForest:
    """Isolation forest over log(1 + x) of each process's features (docs/ml.md); the score is
    scikit-learn's anomaly score (0.5 average, near 1 isolated at once). The model file keeps the
    training matrix and the seed, not the trees: the same scikit-learn refits the same forest,
    and no pickled code is ever loaded."""

    method = "iforest"
    defaults = {"trees": 200, "seed": 0, "ngram": 1}

    def __init__(self, trees=200, seed=0, ngram=1):
        self.trees, self.seed, self.ngram = int(trees), int(seed), int(ngram)
        self.columns: list[str] = []
        self.x = np.zeros((0, 0))

    @property
    def params(self) -> dict:
        return {"trees": self.trees, "seed": self.seed, "ngram": self.ngram}

    def _fit_matrix(self, x: np.ndarray, columns: list[str]):
        self.version, forest = _sklearn()
        self.x, self.columns = x, columns
        self.forest = forest(n_estimators=self.trees, random_state=self.seed).fit(np.log1p(np.abs(x)) * np.sign(x))
        # robust spread per column, for naming the features a process stands out by
        self.median = np.median(self.x, axis=0)
        q1, q3 = np.percentile(self.x, [25, 75], axis=0)
        self.spread = np.maximum(q3 - q1, np.maximum(np.abs(self.median) * 0.1, 1e-9))
        return self

    def _rows(self, procs: list[Process]) -> list[dict]:
        return [{"process": p.key, "name": p.name, **features.process_row(p, (0, 0, 0), self.ngram)} for p in procs]

    def fit(self, procs: list[Process], columns: list[str] | None = None):
        """Fits on these processes' features: the given columns, else every one they have."""
        rows = self._rows(procs)
        if columns is None:
            columns = sorted({c for row in rows for c in row} - LEFT_OUT)
        x, columns = features.matrix(rows, columns)
        return self._fit_matrix(x, columns)

    def score_many(self, procs: list[Process]) -> list[tuple[float, list[dict]]]:
        rows = self._rows(procs)
        if not rows:
            return []
        x, _ = features.matrix(rows, self.columns)
        scores = -self.forest.score_samples(np.log1p(np.abs(x)) * np.sign(x))
        z = (x - self.median) / self.spread
        unseen = sorted({c for row in rows for c in row} - set(self.columns) - LEFT_OUT)
        out = []
        for i, row in enumerate(rows):
            order = np.argsort(-np.abs(z[i]))[:TOP]
            top = [{"feature": self.columns[j], "value": float(x[i, j]), "median": float(self.median[j])}
                   for j in order if z[i, j] != 0]
            new = [c for c in unseen if row.get(c)]  # columns training never had, e.g. a new call
            top += [{"feature": c, "value": float(row[c]), "median": 0.0} for c in new[:TOP - len(top)]]
            out.append((float(scores[i]), top))
        return out

    def state(self) -> dict:
        return {"sklearn_version": self.version, "columns": self.columns, "x": self.x.tolist()}

    def load(self, state: dict):
        x = np.asarray(state["x"], dtype=np.float64).reshape(len(state["x"]), len(state["columns"]))
        return self._fit_matrix(x, list(state["columns"]))
