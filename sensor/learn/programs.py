"""Per-program models: a process is compared with the normal processes of its own program; a global
model, learnt from every program, scores the programs training never saw, plus a fixed amount."""
from __future__ import annotations

from .runs import Process, Run

# What a never-seen program adds to the global model's score, in each method's unit: STIDE one
# whole frame of unseen windows; n-gram 8 bits of surprisal per call (a call seen 1 in 256 times
# after its context); forest about the gap between a typical (0.4) and an isolated (0.9) process.
UNSEEN = {"stide": 1.0, "ngram-freq": 8.0, "iforest": 0.5}
# a forest of fewer processes isolates anything: such programs are scored by the global one
MIN_PROCESSES = {"iforest": 5}


def program(p: Process) -> str | None:
    """The program a process runs, by its command name; None where the layout has none (ADFA-LD)."""
    return None if p.name in ("", "?") else p.name


class PerProgram:
    """One base model (stide, ngram-freq, iforest) per program with its global model as fallback."""

    def __init__(self, make, method: str):
        self.make, self.method = make, method  # make(): a fresh base model
        self.base = make()
        self.programs: dict[str, object] = {}
        self.known: set[str] | None = set()  # None: a version 1 file, without programs
        self.unseen = UNSEEN[method]

    @property
    def params(self) -> dict:
        return self.base.params

    @property
    def floor(self) -> float:
        return getattr(self.base, "floor", 0.0)

    def _part(self, procs: list[Process]):
        columns = getattr(self.base, "columns", None)  # the forest's: one feature space for all
        return self.make().fit(procs, columns) if columns is not None else self.make().fit(procs)

    def fit(self, runs: list[Run]):
        procs = [p for r in runs for p in r.processes]
        self.base.fit(procs)
        by: dict[str, list[Process]] = {}
        for p in procs:
            if (key := program(p)) is not None:
                by.setdefault(key, []).append(p)
        self.known = set(by)
        least = MIN_PROCESSES.get(self.method, 1)
        self.programs = {k: self._part(ps) for k, ps in sorted(by.items()) if len(ps) >= least}
        return self

    def score_processes(self, procs: list[Process]) -> list[dict]:
        """Per process, in order: score, top contributions, program and whether training saw it."""
        groups: dict[str | None, list[int]] = {}
        for i, p in enumerate(procs):
            groups.setdefault(program(p), []).append(i)
        out: list[dict] = [{}] * len(procs)
        for key, idx in groups.items():
            seen = key is None or self.known is None or key in self.known
            model = self.programs.get(key, self.base)
            for i, (score, top) in zip(idx, model.score_many([procs[i] for i in idx])):
                p = procs[i]
                out[i] = {"process": p.key, "name": p.name, "calls": len(p.calls),
                          "score": score + (0.0 if seen else self.unseen), "top": top,
                          "program": key, "program_seen": seen}
        return out

    def score_run(self, run: Run) -> list[dict]:
        return self.score_processes(run.processes)

    def state(self) -> dict:
        return {"global": self.base.state(), "unseen": self.unseen, "known": sorted(self.known or ()),
                "programs": {k: m.state() for k, m in self.programs.items()}}

    def load(self, state: dict):
        if "global" not in state:  # version 1: one global model
            self.base.load(state)
            self.known = None
            return self
        self.base.load(state["global"])
        self.unseen = float(state["unseen"])
        self.known = set(state["known"])
        self.programs = {k: self.make().load(s) for k, s in state["programs"].items()}
        return self
