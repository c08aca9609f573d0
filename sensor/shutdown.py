"""Stopping on a signal: a flag that a signal handler can set safely.

A threading.Event takes a lock in set(). A second signal that arrives while the handler is still
inside set() runs the handler again, nested in the same thread, which then waits forever on that
lock (seen: `timeout` forwarding a SIGINT that pkill had also sent). And a flood of signals nests
handlers until Python's recursion limit. So the first signal sets a plain flag and ignores the
rest: the stop (draining the kernel buffers, closing every file) is under way already."""
from __future__ import annotations

import signal


class StopFlag:
    def __init__(self, signals: tuple[int, ...] = ()):
        self._set = False
        self.signals = signals

    def set(self):
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def ignore_the_rest(self):
        """Once stopped by a signal, the stop signals stay ignored through the exit: the
        interpreter's exit restores their default action, and one more of a burst arriving
        then ended a process whose work was done by that signal (seen: exit -2 after
        'stopped; N events stored')."""
        if self._set:
            for s in self.signals:
                signal.signal(s, signal.SIG_IGN)


def stop_on(signals: tuple[int, ...]) -> tuple[StopFlag, dict]:
    """A StopFlag that the first of these signals sets; returns it and the handlers it replaced."""
    stop = StopFlag(signals)

    def handler(signum, frame):
        # Only the flag: re-registering SIG_IGN here ran signal.signal()'s Python wrapper, where
        # a flood of signals nested handlers deep enough to break it (seen in CI: a ValueError
        # out of signal.py after 200 SIGINTs in a row). Later signals find the flag set.
        stop._set = True

    return stop, {s: signal.signal(s, handler) for s in signals}
