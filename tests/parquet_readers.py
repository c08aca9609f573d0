"""A Parquet file read whole by another reader than pyarrow: DuckDB, as users query traces."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq


def assert_duckdb_reads_as_pyarrow(path: Path):
    """DuckDB's read_parquet finds the rows pyarrow finds, and reads their pages (a sum over
    every row of a column without statistics, so no footer shortcut answers it)."""
    table = pq.read_table(path, columns=["duration_ns", "tid"])
    with duckdb.connect() as con:
        rows, durations, tids = con.execute(
            "select count(*), sum(duration_ns), count(distinct tid) from read_parquet(?)", [str(path)]).fetchone()
    assert rows == table.num_rows > 0
    assert durations == pc.sum(table["duration_ns"]).as_py()
    assert tids == pc.count_distinct(table["tid"]).as_py()
