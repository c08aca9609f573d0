"""The panel's index follows the real Store: the open segment as it grows (only new whole lines
read, none twice), its compression, and retention's pruning."""
from __future__ import annotations

import os

from sensor.dashboard.index import LocalIndex
from sensor.host import Host
from sensor.schema import Stamper
from sensor.store import Store


def alert(stamper, n):
    return stamper.stamp({"event": {"kind": "alert", "dataset": "alert", "severity": 73},
                          "rule": {"id": "r1", "name": "rule one"}, "process": {"pid": n, "entity_id": f"e{n}"}})


def count(ix, table="alerts"):
    return ix.cursor().execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()


def test_index_follows_the_open_segment_compression_and_retention(tmp_path):
    stamper = Stamper(Host())
    store = Store(tmp_path, segment_bytes=1 << 30, flush_interval=3600)
    ix = LocalIndex(tmp_path, min_interval=0)
    try:
        for n in range(5):
            store.write(alert(stamper, n))
        store.flush()
        # a line still being written: its first half only
        os.write(store._fd, b'{"event": {"kind": "alert", "id": "half"')
        store._seg_size += 40
        assert ix.refresh() == 1 and count(ix) == (5, 5)
        (plain,) = ix.cursor().execute("SELECT file, indexed, size FROM segs").fetchall()
        assert plain[0].endswith(".jsonl") and plain[1] == plain[2] - 40
        os.write(store._fd, b', "x": 1}}\n')  # the line completes; then more events
        for n in range(5, 8):
            store.write(alert(stamper, n))
        store.flush()
        assert ix.refresh() == 1
        assert count(ix) == (9, 9)  # the completed line (its id "half") and three more, none twice
        store.rotate()  # compressed into .zst: read again whole, the same rows
        assert ix.refresh() == 1 and count(ix) == (9, 9)
        assert ix.cursor().execute("SELECT file FROM segs").fetchone()[0].endswith(".zst")
        assert ix.refresh() == 0  # nothing changed: nothing read
    finally:
        store.close()
    for seg in (tmp_path / "events").iterdir():
        seg.unlink()  # as retention does
    assert ix.refresh() == 0 and count(ix) == (0, 0)
    ix.close()
