"""Process starts that several Windows sources report: ETW's Kernel-Process, Sysmon's event 1 and
Security's 4688 can each name the same process. The first report is the process's one exec event;
a later one of the same pid and start time is merged into the process cache and counted, never a
second exec event (it would repeat every process_creation alert)."""
from __future__ import annotations

from collections import OrderedDict

# Sysmon's UtcTime has ms, ETW's CreateTime 100 ns; 4688 has no start time, only the time it was
# logged (a few ms later). Windows reuses a pid only after its process is gone: within a second,
# the same pid is the same process.
WINDOW_NS = 1_000_000_000


class Starts:
    """pid -> start times of its recent processes, shared by the sources that report them (a burst
    can hold several processes of one pid before the slower source's reports of them come)."""

    def __init__(self, window_ns: int = WINDOW_NS, keep: int = 8192, per_pid: int = 4):
        self.window_ns, self.keep, self.per_pid = window_ns, keep, per_pid
        self._seen: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.merged = 0  # reports of a process already reported: merged, not emitted

    def first(self, pid: int, start_ns: int) -> bool:
        """True for the first report of this process; False (and counted) for a repeat."""
        prev = self._seen.get(pid, ())
        if any(abs(p - start_ns) <= self.window_ns for p in prev):
            self.merged += 1
            return False
        self._seen[pid] = (prev + (start_ns,))[-self.per_pid:]
        self._seen.move_to_end(pid)
        if len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        return True
