"""syscalls.parquet's segments: joined by one footer into a file pyarrow and DuckDB read whole."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parquet_readers import assert_duckdb_reads_as_pyarrow
from sensor.segments import (MAGIC, JoinedView, SegmentError, Segments, SegmentWriter, encoded,
                             file_metadata, placed)
from sensor.tracefile import PARQUET_OPTIONS, Comms, Encoder

ROW_GROUP = 1000


def batches(enc: Encoder, sizes: list[int]) -> list[pa.Table]:
    """Tables in the trace's schema, each with rows of its own (timestamps rise throughout)."""
    comms = Comms()
    comms.set(7, 0, "storm")
    out, done = [], 0
    for n in sizes:
        r = np.zeros(n, enc.dtype)
        r["enter_ns"] = np.arange(done + 1, done + n + 1) * 1000
        r["duration_ns"] = np.arange(n) % 97 + done
        r["pid"], r["tid"], r["nr"], r["ret"] = 7, np.arange(n) % 5 + 7, 110, np.arange(n) % 3
        out.append(enc._table(r, comms))
        done += n
    return out


def write(path, enc: Encoder, tables: list[pa.Table]) -> SegmentWriter:
    w = SegmentWriter(path, enc.schema, PARQUET_OPTIONS)
    for i, t in enumerate(tables):
        w.write(t, ROW_GROUP, i)
    return w


@pytest.mark.parametrize("with_args", [False, True])
def test_sealed_segments_read_as_one_file(tmp_path, with_args):
    enc = Encoder(with_args, 0)
    tables = batches(enc, [2500, 1, 999, 1000, 3001])  # several row groups in a segment, and one row
    path = tmp_path / "syscalls.parquet"
    w = write(path, enc, tables)
    unsealed = Segments(path).footer()
    w.seal()
    whole = pa.concat_tables(tables)
    assert path.read_bytes().endswith(unsealed)  # read unsealed, it is the file sealing makes
    f = pq.ParquetFile(path)
    assert f.read().equals(whole)
    md = f.metadata
    groups = [md.row_group(i) for i in range(md.num_row_groups)]
    assert [g.num_rows for g in groups] == [1000, 1000, 500, 1, 999, 1000, 1000, 1000, 1000, 1]
    # every row group's statistics and pages are its own, where its segment put them
    stats = [g.column(0).statistics for g in groups]
    starts = np.cumsum([0] + [g.num_rows for g in groups])
    ts = whole["timestamp_ns"].to_pylist()
    assert [(s.min, s.max) for s in stats] == [(ts[a], ts[b - 1]) for a, b in zip(starts, starts[1:])]
    offsets = [g.column(c).data_page_offset for g in groups for c in range(g.num_columns)]
    assert offsets == sorted(offsets) and offsets[-1] < path.stat().st_size
    # deprecated, 0 where no ColumnMetaData is written outside the footer: it stays 0
    assert {g.column(c).file_offset for g in groups for c in range(g.num_columns)} == {0}
    for i in (0, 3, len(groups) - 1):
        assert f.read_row_group(i).equals(whole.slice(starts[i], groups[i].num_rows))
    assert_duckdb_reads_as_pyarrow(path)


def test_a_kill_mid_segment_keeps_the_whole_ones(tmp_path):
    enc = Encoder(False, 0)
    tables = batches(enc, [1500, 700, 2000])
    path = tmp_path / "syscalls.parquet"
    w = write(path, enc, tables)
    w.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the last segment torn by a kill: its footer never written
        f.truncate(size - 100)
    segs = Segments(path)
    assert segs.rows == 2200 and len(segs.ends) == 3  # the empty first segment, then two
    with JoinedView(segs) as view:
        assert pq.read_table(view).equals(pa.concat_tables(tables[:2]))
    w = SegmentWriter(path, enc.schema, PARQUET_OPTIONS, after=segs)  # as recover goes on
    w.write(tables[2], ROW_GROUP, 0)
    w.seal()
    assert pq.read_table(path).equals(pa.concat_tables(tables))
    assert_duckdb_reads_as_pyarrow(path)


def test_ordinals_are_renumbered_and_left_out_past_an_i16(tmp_path):
    """pyarrow writes no RowGroup.ordinal (it is for encrypted files): none is added; where a
    writer gave one, it becomes the group's place in the joined file, and is left out where that
    does not fit its i16."""
    enc = Encoder(False, 0)
    path = tmp_path / "one.parquet"
    pq.write_table(batches(enc, [10])[0], path, **PARQUET_OPTIONS)
    data = path.read_bytes()
    footer = data[-8 - int.from_bytes(data[-8:-4], "little"):-8]
    assert placed(footer, 0, 5).row_groups[0].ordinal is None
    meta = file_metadata(footer)
    meta.row_groups[0].ordinal = 0
    numbered = encoded(meta)
    assert placed(numbered, 0, (1 << 15) - 1).row_groups[0].ordinal == (1 << 15) - 1
    meta = placed(numbered, 0, 1 << 15)
    assert meta.row_groups[0].ordinal is None
    out = encoded(meta)
    path.write_bytes(data[:-8 - len(footer)] + out + len(out).to_bytes(4, "little") + MAGIC)
    assert pq.read_table(path).num_rows == 10


def test_bytes_that_are_not_a_footer(tmp_path):
    """Torn or damaged footers are a SegmentError, whatever the Thrift decoder trips on."""
    enc = Encoder(True, 0)
    path = tmp_path / "one.parquet"
    pq.write_table(batches(enc, [10])[0], path, **PARQUET_OPTIONS)
    data = path.read_bytes()
    footer = data[-8 - int.from_bytes(data[-8:-4], "little"):-8]
    assert file_metadata(footer).num_rows == 10
    rnd = random.Random(0)
    bad = [b"", bytes(64), footer[:len(footer) // 2], footer[:-1]]
    bad += [footer[:rnd.randrange(len(footer))] for _ in range(200)]
    bad += [rnd.randbytes(rnd.randrange(1, 300)) for _ in range(200)]
    errors = 0
    for b in bad:
        try:
            meta = file_metadata(b)
        except SegmentError:
            errors += 1
        else:  # a prefix can end where a whole FileMetaData does: then it has its fields
            assert isinstance(meta.num_rows, int) and meta.schema
    assert errors >= len(bad) - 10
