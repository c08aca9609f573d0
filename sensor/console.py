"""The live terminal summary of `sensor run` (rich): counts, rates, losses, latest processes."""
from __future__ import annotations

import time
from collections import deque

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


class LiveSummary:
    """A pipeline sink that remembers recent process events and renders the pipeline's state."""

    def __init__(self, pipeline, rows: int = 12):
        self.pipeline = pipeline
        self.recent: deque = deque(maxlen=rows)
        self._rates: dict[str, tuple[float, int, float]] = {}
        self._live = Live(self, refresh_per_second=2, transient=False, redirect_stderr=False)

    def __call__(self, event: dict):
        ev = event["event"]
        if ev.get("dataset") != "process":
            return
        p = event.get("process", {})
        detail = p.get("command_line") or p.get("executable") or p.get("name") or ""
        if ev["action"] == "exit":
            detail = f"exit {p.get('exit_code')}  {p.get('name') or ''}"
        self.recent.append((event["@timestamp"][11:23], ev["action"], str(p.get("pid", "")),
                            (event.get("user") or {}).get("name", ""), detail[:120]))

    def _rate(self, name: str, count: int) -> float:
        now = time.monotonic()
        t0, c0, rate = self._rates.get(name, (now, count, 0.0))
        if now - t0 >= 1.0:
            rate = (count - c0) / (now - t0)
            t0, c0 = now, count
        self._rates[name] = (t0, c0, rate)
        return rate

    def __rich__(self):
        p = self.pipeline
        head = Table.grid(padding=(0, 2))
        head.add_row(Text("sensor", style="bold"), f"host {p.host.hostname}",
                     f"up {time.monotonic() - p.started:,.0f}s", f"data {p.store.events_dir}")
        counts = Table(title="sources", title_justify="left", expand=False)
        for col in ("source", "events", "events/s", "lost (kernel)", "lost (user)", "queued"):
            counts.add_column(col, justify="right" if col != "source" else "left")
        for s in p.sources:
            st = s.stats()
            n = p.emitted[s.name]
            lost = st["lost_kernel"]
            counts.add_row(s.name, f"{n:,}", f"{self._rate(s.name, n):,.0f}",
                           Text(f"{lost:,}", style="red" if lost else ""), f"{st['lost_user']:,}",
                           f"{st['queue_bytes']:,} B")
        counts.add_row("store", f"{p.store.written:,}", "", "", Text(f"{p.store.dropped:,}",
                       style="red" if p.store.dropped else ""), "")
        recent = Table(title="latest process events", title_justify="left", expand=True)
        for col in ("time", "action", "pid", "user"):
            recent.add_column(col, no_wrap=True)
        recent.add_column("command", ratio=1, overflow="ellipsis", no_wrap=True)
        for row in list(self.recent):
            recent.add_row(*row)
        return Group(head, counts, recent, Text("Ctrl-C stops the sensor", style="dim"))

    def __enter__(self):
        self._live.start()
        return self

    def __exit__(self, *exc):
        self._live.stop()
