"""The outbox on real files: order, acknowledgement, restart, the size bound, a torn record."""
from __future__ import annotations

from sensor.fleet.outbox import Outbox


def records(start, n, pad=40):
    return [b"sensor.events.h.process id-%04d {\"n\":%04d,\"pad\":\"%s\"}\n" % (i, i, b"x" * pad) for i in range(start, start + n)]


def test_records_come_back_in_order_across_segments_and_restarts(tmp_path):
    box = Outbox(tmp_path, segment_bytes=1000)
    for i in range(0, 100, 10):  # as the publisher thread hands them over
        box.append(records(i, 10))
    assert len(list(tmp_path.glob("*.out"))) > 3  # rotated
    got = box.read(30)
    assert [r for _, r in got] == records(0, 30)
    box.ack(got[-1][0], 30)
    box.save()
    box.close()

    box = Outbox(tmp_path, segment_bytes=1000)  # a restarted sensor resumes after the acked record
    assert box.pending == 70
    rest = []
    while chunk := box.read(17):
        rest += chunk
    assert [r for _, r in rest] == records(30, 70)
    box.rewind()  # a failed send reads the same records again
    assert [r for _, r in box.read(5)] == records(30, 5)
    box.ack(rest[-1][0], 70)
    assert box.pending == 0 and box.size == 0
    assert len(list(tmp_path.glob("*.out"))) == 1  # sent segments are deleted
    box.close()


def test_what_overflows_the_bound_is_refused_and_counted(tmp_path):
    recs = records(0, 100)
    box = Outbox(tmp_path, max_bytes=len(recs[0]) * 60, segment_bytes=1 << 20)
    assert box.append(recs) == 60
    assert box.overflow == 40 and box.pending == 60
    got = box.read(100)
    box.ack(got[9][0], 10)  # room again for 10
    assert box.append(records(100, 20)) == 10
    assert box.overflow == 50
    box.close()


def test_a_record_torn_by_a_killed_sensor_is_cut(tmp_path):
    box = Outbox(tmp_path)
    box.append(records(0, 3))
    box.close()
    seg = next(tmp_path.glob("*.out"))
    with open(seg, "ab") as f:
        f.write(b"sensor.events.h.process id-3 {\"n\":")  # the kill came mid-write
    box = Outbox(tmp_path)
    assert box.recovered_partial == 1 and box.pending == 3
    assert [r for _, r in box.read(10)] == records(0, 3)
    box.close()


def test_reads_in_chunks_and_a_record_longer_than_a_chunk(tmp_path):
    box = Outbox(tmp_path, segment_bytes=1 << 20)
    recs = records(0, 2000, pad=300) + [b"sensor.events.h.process big {\"pad\":\"%s\"}\n" % (b"y" * 600_000)]
    recs += records(2000, 5)
    box.append(recs)
    got = []
    while chunk := box.read(333, chunk=4096):
        got += [r for _, r in chunk]
    assert got == recs  # across chunk edges, segment edges, and the long one whole
    box.close()
