"""Sliding windows of syscall names as int64 codes, so sets and counts of them are numpy operations."""
from __future__ import annotations

import numpy as np

BITS = 10  # bits per call in a code: 1,023 names, windows up to 6 calls in 60 bits
MAX_N = 63 // BITS
PAD = 0  # id of the padding before a process shorter than a window


class Vocab:
    """Name <-> id; names never seen get ids of their own, which no known window holds."""

    def __init__(self, names=()):
        self.ids: dict[str, int] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            if len(self.ids) + 1 >= 1 << BITS:
                raise ValueError(f"more than {(1 << BITS) - 2} distinct syscall names")
            i = self.ids[name] = len(self.ids) + 1
        return i

    def encode(self, calls: list[str], grow: bool = True) -> np.ndarray:
        get = self.add if grow else (lambda n: self.ids.get(n, (1 << BITS) - 1))
        return np.fromiter((get(c) for c in calls), dtype=np.int64, count=len(calls))

    def extended(self) -> "Vocab":
        """A copy to score with: names the model never saw get new ids, so reports can name them."""
        v = Vocab()
        v.ids = dict(self.ids)
        return v

    @property
    def names(self) -> list[str]:
        return list(self.ids)


def windows(ids: np.ndarray, n: int) -> np.ndarray:
    """Every window of n consecutive calls as one code; a shorter sequence is one padded window."""
    if len(ids) < n:
        ids = np.r_[np.full(n - len(ids), PAD, dtype=np.int64), ids]
    m = len(ids) - n + 1
    codes = np.zeros(m, dtype=np.int64)
    for j in range(n):
        codes = (codes << BITS) | ids[j:j + m]
    return codes


def decode(code: int, n: int, names: list[str]) -> list[str]:
    """A code back to its names (padding shown as ^, a name the model never saw as ?)."""
    out = []
    for j in range(n):
        i = (int(code) >> (BITS * (n - 1 - j))) & ((1 << BITS) - 1)
        out.append("^" if i == PAD else names[i - 1] if i - 1 < len(names) else "?")
    return out


def frame_max(values: np.ndarray, frame: int) -> float:
    """The largest sum of `frame` consecutive values (all of them when there are fewer)."""
    if len(values) <= frame:
        return float(values.sum())
    c = np.r_[0.0, np.cumsum(values, dtype=np.float64)]
    return float((c[frame:] - c[:-frame]).max())
