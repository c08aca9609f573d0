"""Baseline anomaly detectors learnt from normal runs: STIDE, n-gram frequencies, an isolation forest."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from . import ngrams
from .ngrams import Vocab, decode, frame_max, windows
from .runs import Process

TOP = 5  # contributing sequences or features reported per process


class Stide:
    """STIDE (Forrest et al. 1996, Warrender et al. 1999): every window of n calls seen in normal
    runs; a process scores the most unseen windows in any frame of `frame` windows, over frame."""

    method = "stide"
    defaults = {"n": 6, "frame": 20}

    def __init__(self, n=6, frame=20):
        self.n, self.frame = int(n), int(frame)
        self.vocab = Vocab()
        self.known = np.zeros(0, dtype=np.int64)

    @property
    def params(self) -> dict:
        return {"n": self.n, "frame": self.frame}

    def fit(self, procs: list[Process]):
        codes = [windows(self.vocab.encode(p.program_calls()), self.n) for p in procs]
        self.known = np.unique(np.concatenate(codes)) if codes else self.known
        return self

    def score(self, p: Process) -> tuple[float, list[dict]]:
        vocab = self.vocab.extended()
        codes = windows(vocab.encode(p.program_calls()), self.n)
        unseen = ~np.isin(codes, self.known)
        score = frame_max(unseen.astype(np.float64), self.frame) / self.frame
        # windows with calls never seen at all first, then the most frequent unseen ones
        new = codes >= 0 if len(vocab.ids) == len(self.vocab.ids) else _has_new(codes, self.n, len(self.vocab.ids))
        counts = Counter(codes[unseen].tolist())
        fresh = set(codes[unseen & new].tolist())
        top = sorted(counts.items(), key=lambda kv: (kv[0] not in fresh, -kv[1]))[:TOP]
        return score, [{"sequence": decode(c, self.n, vocab.names), "count": k} for c, k in top]

    def score_many(self, procs: list[Process]) -> list[tuple[float, list[dict]]]:
        return [self.score(p) for p in procs]

    @property
    def floor(self) -> float:
        """The least threshold: one call out of place (a signal come earlier) makes n unseen windows."""
        return self.n / self.frame

    def state(self) -> dict:
        names = self.vocab.names
        return {"vocab": names, "windows": [decode(c, self.n, names) for c in self.known.tolist()]}

    def load(self, state: dict):
        self.vocab = Vocab(state["vocab"])
        enc = [self.vocab.encode([c for c in w if c != "^"], grow=False) for w in state["windows"]]
        self.known = np.unique(np.array([windows(e, self.n)[0] for e in enc], dtype=np.int64))
        return self


class NgramFreq(Stide):
    """n-gram frequencies of normal runs as a language model: a call's surprisal is -log2 of its
    smoothed frequency after the n-1 calls before it; a process scores the mean surprisal of its
    worst frame of `frame` windows (of all of them, when fewer)."""

    method = "ngram-freq"
    # a shorter frame than STIDE's: a few surprising calls in a long run of expected ones are
    # what an injected library or a changed path looks like (measured: tests/test_learn.py)
    defaults = {"n": 3, "frame": 10, "alpha": 0.01}

    def __init__(self, n=3, frame=10, alpha=0.01):
        super().__init__(n, frame)
        self.alpha = float(alpha)
        self.counts = np.zeros(0, dtype=np.int64)

    @property
    def params(self) -> dict:
        return {"n": self.n, "frame": self.frame, "alpha": self.alpha}

    floor = 0.0

    def fit(self, procs: list[Process]):
        codes = [windows(self.vocab.encode(p.program_calls()), self.n) for p in procs]
        if codes:
            self.known, self.counts = np.unique(np.concatenate(codes), return_counts=True)
        return self._contexts()

    def _contexts(self):
        # the windows are sorted, so those sharing their first n-1 calls are neighbours
        self.prefixes, first = np.unique(self.known >> ngrams.BITS, return_index=True)
        self.prefix_counts = np.add.reduceat(self.counts, first) if len(first) else self.counts
        return self

    @staticmethod
    def _lookup(sorted_codes: np.ndarray, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if not len(sorted_codes):
            return np.zeros(len(codes), dtype=np.int64)
        at = np.searchsorted(sorted_codes, codes).clip(0, len(sorted_codes) - 1)
        return np.where(sorted_codes[at] == codes, values[at], 0)

    def _surprisal(self, codes: np.ndarray) -> np.ndarray:
        c = self._lookup(self.known, self.counts, codes)
        ctx = self._lookup(self.prefixes, self.prefix_counts, codes >> ngrams.BITS)
        v = len(self.vocab.ids) + 1  # every name seen, and one for any other
        # add-alpha: a call never seen after its context costs about log2(context count / alpha)
        return -np.log2((c + self.alpha) / (ctx + self.alpha * v))

    def score(self, p: Process) -> tuple[float, list[dict]]:
        vocab = self.vocab.extended()
        codes = windows(vocab.encode(p.program_calls()), self.n)
        s = self._surprisal(codes)
        score = frame_max(s, self.frame) / min(self.frame, len(s))
        worst = {}
        for c, v in zip(codes.tolist(), s.tolist()):
            worst[c] = (v, worst.get(c, (0, 0))[1] + 1)
        top = sorted(worst.items(), key=lambda kv: -kv[1][0])[:TOP]
        return score, [{"sequence": decode(c, self.n, vocab.names), "surprisal": round(v, 2), "count": k}
                       for c, (v, k) in top]

    def state(self) -> dict:
        names = self.vocab.names
        return {"vocab": names, "ngrams": [decode(c, self.n, names) + [k]
                                           for c, k in zip(self.known.tolist(), self.counts.tolist())]}

    def load(self, state: dict):
        self.vocab = Vocab(state["vocab"])
        pairs = [(windows(self.vocab.encode([c for c in w[:-1] if c != "^"], grow=False), self.n)[0], w[-1])
                 for w in state["ngrams"]]
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        self.known = np.array([pairs[i][0] for i in order], dtype=np.int64)
        self.counts = np.array([pairs[i][1] for i in order], dtype=np.int64)
        return self._contexts()


def _has_new(codes: np.ndarray, n: int, known: int) -> np.ndarray:
    """Which windows hold a call whose id is past the model's vocabulary (a name never seen)."""
    mask = (1 << ngrams.BITS) - 1
    return np.logical_or.reduce([((codes >> (ngrams.BITS * j)) & mask) > known for j in range(n)])


METHODS = {m.method: m for m in (Stide, NgramFreq)}


def check_params(method: str, n: int | None, frame: int | None) -> dict:
    """The method's parameters, defaults filled in; bad values are a ValueError naming the flag."""
    if method == "iforest":
        from .forest import IForest

        if n is not None or frame is not None:
            raise ValueError("--n and --frame are for stide and ngram-freq; iforest learns from features")
        return dict(IForest.defaults)
    params = dict(METHODS[method].defaults)
    if n is not None:
        if not 1 <= n <= ngrams.MAX_N:
            raise ValueError(f"--n {n}: windows hold 1 to {ngrams.MAX_N} calls")
        params["n"] = n
    if frame is not None:
        if frame < 1:
            raise ValueError(f"--frame {frame}: at least 1")
        params["frame"] = frame
    return params


def quantile(scores: list[float], q: float) -> float:
    """The q-quantile of the scores, rounded up to an observed score (so 'higher' never interpolates)."""
    return float(np.quantile(np.asarray(scores), q, method="higher")) if scores else math.inf
