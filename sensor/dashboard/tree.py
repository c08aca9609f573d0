"""The process tree around an alert's process: ancestors, descendants, and what each one did."""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_DEPTH = 16  # ancestors walked up
MAX_NODES = 200  # descendants taken, breadth first
MAX_ITEMS = 50  # files and connections listed per process


@dataclass
class Node:
    entity_id: str
    parent: str | None = None
    pid: int | None = None
    name: str = ""
    executable: str = ""
    args: list = field(default_factory=list)
    start: str = ""
    exit_code: int | None = None
    exit_signal: int | None = None
    blocked: bool = False
    execs: list = field(default_factory=list)  # [(time, executable, command line)] in order
    files: list = field(default_factory=list)  # [(time, action, path)]
    connections: list = field(default_factory=list)  # [(time, action, "proto ip:port")]
    more_files: int = 0
    more_connections: int = 0
    children: list = field(default_factory=list)
    role: str = "descendant"  # ancestor, alert, descendant


def around(alert: dict, parents, children, details) -> list[Node]:
    """The tree of an alert's process, or [] when the alert names none."""
    process = alert.get("process") or {}
    return build(process["entity_id"], parents, children, details, process) if process.get("entity_id") else []


def build(root: str, parents, children, details, alert_process: dict | None = None) -> list[Node]:
    """Nodes from the oldest ancestor down, each with `children` filled; the backend gives
    parents(ids) -> {id: parent id}, children(ids) -> [(id, parent id)], details(ids) -> [event]."""
    up = [root]
    seen = {root}
    while len(up) <= MAX_DEPTH:
        parent = parents([up[-1]]).get(up[-1])
        if not parent or parent in seen:
            break
        seen.add(parent)
        up.append(parent)
    down, frontier = [], [root]
    while frontier and len(down) < MAX_NODES:
        nxt = []
        for child, parent in children(frontier):
            if child not in seen and len(down) < MAX_NODES:
                seen.add(child)
                down.append((child, parent))
                nxt.append(child)
        frontier = nxt
    nodes = {e: Node(e, role="ancestor") for e in up[1:]}
    nodes[root] = Node(root, role="alert")
    for i, e in enumerate(up[:-1]):
        nodes[e].parent = up[i + 1]
    for child, parent in down:
        nodes[child] = Node(child, parent=parent)
    if alert_process:
        _fill(nodes[root], alert_process)
    for ev in sorted(details(list(nodes)), key=lambda ev: ev.get("@timestamp", "")):
        n = nodes.get((ev.get("process") or {}).get("entity_id"))
        if n is not None:
            _add(n, ev)
    for n in nodes.values():
        if n.parent in nodes:
            nodes[n.parent].children.append(n.entity_id)
    return list(nodes.values())


def _fill(n: Node, p: dict):
    n.pid = p.get("pid", n.pid)
    n.name = p.get("name") or n.name
    n.executable = p.get("executable") or n.executable
    n.args = p.get("args") or n.args
    n.start = p.get("start") or n.start
    if p.get("parent", {}).get("entity_id") and not n.parent:
        n.parent = p["parent"]["entity_id"]


def _add(n: Node, ev: dict):
    e, p = ev.get("event") or {}, ev.get("process") or {}
    ds, action, ts = e.get("dataset"), e.get("action"), ev.get("@timestamp", "")
    if ds in ("process", "host.processes"):
        _fill(n, p)
        if action == "exec":
            n.execs.append((ts, p.get("executable", ""), p.get("command_line", "")))
            n.blocked |= bool((ev.get("sensor") or {}).get("blocked"))
        elif action == "exit":
            n.exit_code, n.exit_signal = p.get("exit_code"), p.get("exit_signal")
    elif ds == "file":
        f = ev.get("file") or {}
        if len(n.files) < MAX_ITEMS:
            n.files.append((ts, action, f.get("path", "")))
        else:
            n.more_files += 1
    elif ds in ("network", "network.dns"):
        dst, src = ev.get("destination") or {}, ev.get("source") or {}
        peer = dst if (ev.get("network") or {}).get("direction") == "egress" else src
        what = ((ev.get("dns") or {}).get("question") or {}).get("name") or f"{peer.get('ip', '?')}:{peer.get('port', '?')}"
        if len(n.connections) < MAX_ITEMS:
            n.connections.append((ts, action, f"{(ev.get('network') or {}).get('transport', '')} {what}".strip()))
        else:
            n.more_connections += 1


def ordered(nodes: list[Node]) -> list[tuple[int, Node]]:
    """(depth, node) from the topmost node down, children in start order: for an indented list."""
    by_id = {n.entity_id: n for n in nodes}
    tops = [n for n in nodes if n.parent not in by_id]
    out, stack = [], [(0, n) for n in reversed(tops)]
    while stack:
        depth, n = stack.pop()
        out.append((depth, n))
        kids = sorted((by_id[c] for c in n.children), key=lambda k: (k.start or "", k.pid or 0))
        stack += [(depth + 1, k) for k in reversed(kids)]
    return out
