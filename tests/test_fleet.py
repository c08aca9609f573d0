"""The fleet path with real servers: sensor -> outbox -> NATS JetStream -> sensor collect ->
PostgreSQL -> sensor events --postgres; TLS and per-host permissions; bad input."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, wait_for
from fleetservers import (NatsServer, collectors, dsn, free_port, make_tls, nats, postgres, produce,  # noqa: F401
                          query, stored_ids, stream_messages)
from sensor.fleet.broker import BrokerOptions
from sensor.fleet.nats_sink import NatsSink


def sensor_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_sensor_events_reach_postgres_once_and_read_back_alike(start_sensor, nats, dsn, collectors):
    collector = collectors(nats.url, dsn)
    s = start_sensor("--sink", "store,nats", "--nats-url", nats.url, "--no-files-enabled", "--no-network-enabled",
                     "--no-security-enabled", "--rules", "none")
    subprocess.run(["sh", "-c", "for i in $(seq 100); do /bin/true; done"], check=True)
    assert s.stop() == 0
    local = [e["event"]["id"] for e in s.events()]
    assert len(local) > 300  # 100 execs alone make 300 events
    wait_for(lambda: len(stored_ids(dsn)) >= len(local), 60, 0.2, "every event in PostgreSQL")
    ids = stored_ids(dsn)
    assert sorted(ids) == sorted(local)  # each once: none lost, none twice
    assert collector.stop() == 0

    where = ["--where", "event.action=exec", "--where", "process.name=true"]
    central = sensor_cli("events", "--postgres", dsn, *where)
    here = sensor_cli("events", "--data-dir", str(s.data_dir), *where)
    assert central.returncode == here.returncode == 0, central.stderr + here.stderr
    central_events = [json.loads(line) for line in central.stdout.splitlines()]
    assert len(central_events) >= 100
    assert central_events == [json.loads(line) for line in here.stdout.splitlines()]

    (name, lost, rss, version), = query(dsn, "SELECT name, lost, rss_bytes, version FROM hosts")
    assert name == socket.gethostname() and lost == 0 and rss > 0 and version
    health = query(dsn, "SELECT doc FROM events WHERE dataset = 'sensor.health' ORDER BY ts DESC LIMIT 1")[0][0]
    assert health["sensor"]["health"]["nats"]["overflow"] == 0


def test_two_collectors_share_the_consumer(tmp_path, nats, dsn, collectors):
    first = collectors(nats.url, dsn, "--batch", "100")
    second = collectors(nats.url, dsn, "--batch", "100")
    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    ids = produce(sink, 20_000, rate=5000)
    sink.close(30)
    assert sink.sent == 20_000
    wait_for(lambda: len(stored_ids(dsn)) >= 20_000, 120, 0.2, "20,000 events stored")
    assert first.stop() == second.stop() == 0
    assert sorted(stored_ids(dsn)) == sorted(ids)
    assert first.stored() > 0 and second.stored() > 0, (first.stored(), second.stored())
    assert first.stored() + second.stored() == 20_000


def test_tls_and_a_host_limited_to_its_own_subjects(tmp_path, dsn, collectors):
    tls = make_tls(tmp_path / "tls")
    # Each host may publish only under its own subjects (and read its acks); the collector may all.
    server = NatsServer(tmp_path / "nats", extra=f"""
tls {{ cert_file: "{tls['server']}", key_file: "{tls['server_key']}", ca_file: "{tls['ca']}", verify: true }}
authorization {{ users: [
  {{ user: collector, password: c-secret }}
  {{ user: host-a, password: a-secret, permissions: {{
       publish: {{ allow: ["sensor.events.host-a.>", "$JS.API.STREAM.INFO.SENSOR"] }},
       subscribe: {{ allow: ["_INBOX.>"] }} }} }}
] }}""")
    try:
        url = f"tls://127.0.0.1:{server.port}"
        tls_flags = ["--nats-tls-ca", tls["ca"], "--nats-tls-cert", tls["client"], "--nats-tls-key", tls["client_key"]]
        collector = collectors(url, dsn, "--nats-user", "collector", "--nats-password", "c-secret", *tls_flags)

        opts = dict(tls_ca=tls["ca"], tls_cert=tls["client"], tls_key=tls["client_key"])
        sink = NatsSink(BrokerOptions.parse(url, user="host-a", password="a-secret", **opts), tmp_path / "outbox")
        from sensor.host import Host
        from sensor.schema import Stamper

        stamper = Stamper(Host())
        ids = []
        for host in ("host-a", "host-b", "host-a"):  # host-b's subject is not host-a's to publish on
            for i in range(50):
                ev = stamper.stamp({"event": {"dataset": "process"}, "host": {"id": host}})
                ev["host"]["id"] = host
                sink.write(ev)
                ids.append(ev["event"]["id"])
        # refused events are dropped and counted; those behind them still go (the outbox does not wedge)
        wait_for(lambda: sink.sent + sink.refused >= 150, 30, 0.1, "host-a's events sent, host-b's refused")
        assert sink.sent == 100 and sink.refused == 50
        stats = sink.stats()
        assert stats["queued"] == 0 and stats["refused"] == 50 and stats["overflow"] == 0
        assert stats["error"] == ("publish refused: no permission to publish to sensor.events.host-b.process; "
                                  "such events are dropped and counted")
        wait_for(lambda: len(stored_ids(dsn)) >= 100, 60, 0.2, "host-a's events stored")
        assert sorted(stored_ids(dsn)) == sorted(ids[:50] + ids[100:])
        sink.close(0.5)
        assert collector.stop() == 0
        with pytest.raises(Exception):  # no client certificate: the server refuses
            stream_messages(url, user="collector", password="c-secret", connect_timeout=2, allow_reconnect=False,
                            tls=BrokerOptions([url], tls_ca=tls["ca"]).ssl_context())
    finally:
        server.stop()


def test_an_nkey_host_publishes_only_under_its_own_subject(tmp_path, dsn, collectors):
    """An nkey user (seed file, no password) allowed only sensor.events.<its id>.>: its events
    go through; those under another host's subject are refused, dropped, counted and said."""
    import os

    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "host.nk").write_bytes(seed)
    server = NatsServer(tmp_path / "nats", extra=f"""
authorization {{ users: [
  {{ user: collector, password: c-secret }}
  {{ nkey: {public}, permissions: {{
       publish: {{ allow: ["sensor.events.host-a.>"] }}, subscribe: {{ allow: ["_INBOX.>"] }} }} }}
] }}""")
    try:
        collector = collectors(server.url, dsn, "--nats-user", "collector", "--nats-password", "c-secret")
        sink = NatsSink(BrokerOptions.parse(server.url, nkey=str(tmp_path / "host.nk")), tmp_path / "outbox")
        ids = {"host-a": [], "Host-B": []}  # nats-py lowercases the server's refusal: matched all the same
        for _ in range(3):  # interleaved, so a refusal sits between events that must still go
            for host in ids:
                ids[host] += produce(sink, 40, host_id=host)
        wait_for(lambda: sink.sent + sink.refused >= 240, 30, 0.1, "every event sent or refused")
        stats = sink.stats()
        assert (sink.sent, sink.refused, stats["queued"], stats["overflow"]) == (120, 120, 0, 0)
        assert "no permission to publish to sensor.events.host-b.process" in stats["error"]
        wait_for(lambda: len(stored_ids(dsn)) >= 120, 60, 0.2, "host-a's events stored")
        assert sorted(stored_ids(dsn)) == sorted(ids["host-a"])
        log = (server.dir / "n1.log").read_text()
        assert log.count(f'Publish Violation - Nkey "{public}", Subject "sensor.events.Host-B.process"') == 120
        sink.close(1)
        assert sink.outbox.pending == 0  # nothing wedged, nothing left behind
        assert collector.stop() == 0
        wrong = tmp_path / "other.nk"  # a seed the server does not know: refused at connect, in one line
        wrong.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        sink = NatsSink(BrokerOptions.parse(server.url, nkey=str(wrong)), tmp_path / "outbox2")
        try:
            wait_for(lambda: sink.stats().get("error"), 30, 0.1, "the refusal reported")
            time.sleep(1.5)  # past a few reconnect attempts: the refusal stays the reason given, not the reset after it
            assert "authorization violation" in sink.stats()["error"].lower() and not sink.connected
        finally:
            sink.close(0)
    finally:
        server.stop()


def test_bad_messages_and_repeats_in_one_batch(tmp_path, nats, dsn, collectors):
    """Messages that are no event are dropped and counted, not redelivered; an event sent twice
    under two message ids (past the stream's dedup) is stored once; the rest of the batch is stored."""
    import asyncio

    import nats as nats_client
    import orjson

    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    ids = produce(sink, 50)
    sink.close(10)
    assert sink.sent == 50

    async def publish_odd_ones():
        nc = await nats_client.connect(nats.url)
        try:
            js = nc.jetstream()
            first = orjson.loads((await js.get_msg("SENSOR", 1)).data)
            await js.publish("sensor.events.h.process", orjson.dumps(first), headers={"Nats-Msg-Id": "again"})
            await js.publish("sensor.events.h.process", b"not json")
            await js.publish("sensor.events.h.process", b'{"event": {"dataset": "process"}}')  # no id, no time
        finally:
            await nc.close()

    asyncio.run(publish_odd_ones())
    collector = collectors(nats.url, dsn, "--batch", "100", "--ack-wait", "1")
    wait_for(lambda: len(stored_ids(dsn)) >= 50, 60, 0.1, "the events stored")
    time.sleep(2)  # past --ack-wait: anything not acked would come again now
    assert collector.stop() == 0
    assert sorted(stored_ids(dsn)) == sorted(ids)
    assert "50 events stored, 1 duplicates ignored, 2 bad messages dropped" in collector.output()
    assert collector.output().count("is not an event, dropped") == 2


def test_hostile_documents_stored_byte_for_byte_and_repeats_once(dsn):
    """The collector's binary COPY: strings holding what COPY's text format escapes (tab, newline,
    CR, backslash, \\N, \\.), control characters, non-ASCII, NUL and raw whitespace between
    tokens reach the columns and the document unchanged (NUL as the schema's \\x00); a batch
    written again stores nothing twice, and its new events still go in."""
    import orjson

    from sensor.fleet.pgwrite import Writer, decode

    hostile = "a\tb\nc\rd\\e \\N \\. \\t \x01\x1f\x7f \"q\" é 中 😀 \u202e end"
    events = [{"@timestamp": f"2026-11-24T23:38:0{i}.123456789Z",
               "event": {"id": f"{hostile}-{i}", "dataset": f"process\t{i}", "kind": "alert", "severity": 73},
               "host": {"id": "host\n1", "name": hostile}, "rule": {"id": f"rule\\{i}", "name": hostile},
               "process": {"entity_id": f"\\.{i}", "args": [hostile, "\x00nul"]}} for i in range(3)]
    odd = {"@timestamp": "2026-11-25T00:00:00Z", "event": {"id": 7, "severity": 2**40},
           "host": {"id": "h2"}, "rule": {"id": 5}}  # a number as id and rule id, a severity no integer column holds
    spaced = orjson.dumps(events[0]).replace(b'{"', b'{ \t\r\n"').replace(b'":', b'"\n:\t')
    assert orjson.loads(spaced) == events[0]

    def rows(docs):
        decoded = [decode(d) for d in docs]
        return [r for r, _ in decoded], [doc for _, doc in decoded]

    writer = Writer(dsn)
    try:
        assert writer.write(*rows([spaced] + [orjson.dumps(e) for e in events[1:]] + [orjson.dumps(odd)])) == 4
        assert writer.write(*rows([orjson.dumps(events[0]), orjson.dumps(dict(odd, event={"id": 8}))])) == 1
    finally:
        writer.close()
    assert (writer.stored, writer.duplicates) == (5, 1)
    got = {r[0]: r[1:] for r in query(dsn, "SELECT id, host_id, dataset, kind, rule_id, process_entity, severity, "
                                           "doc FROM events")}
    for i, ev in enumerate(events):
        stored = dict(ev, process=dict(ev["process"], args=[hostile, "\\x00nul"]))
        assert got[ev["event"]["id"]] == ("host\n1", f"process\t{i}", "alert", f"rule\\{i}", f"\\.{i}", 73, stored)
    assert got["7"][:6] == ("h2", "", "event", "5", None, None) and got["7"][6] == odd
    assert sorted(got) == sorted([e["event"]["id"] for e in events] + ["7", "8"])
    assert query(dsn, "SELECT id, rule_name FROM alerts ORDER BY id") == [(e["event"]["id"], hostile) for e in events]
    assert query(dsn, "SELECT name FROM hosts WHERE id = %s", "host\n1") == [(hostile,)]


def one_line_error(proc) -> str:
    """The one `sensor: error:` line, last, with no traceback (progress log lines may precede it)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("sensor: error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert sum(line.startswith("sensor: error") for line in lines) == 1
    return lines[-1]


def test_bad_input_gets_a_one_line_error(postgres, dsn, tmp_path):
    dead = f"nats://127.0.0.1:{free_port()}"
    msg = one_line_error(sensor_cli("collect", "--nats-url", dead, "--postgres", dsn))
    assert f"cannot connect to {dead}" in msg
    port = free_port()
    msg = one_line_error(sensor_cli("collect", "--nats-url", dead, "--postgres", f"postgresql://postgres@127.0.0.1:{port}/x"))
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/x" in msg
    assert "not a connection string" in one_line_error(sensor_cli("events", "--postgres", "host=a =b"))
    assert "nats://HOST:PORT" in one_line_error(sensor_cli("collect", "--nats-url", "http://x:1", "--postgres", dsn))
    assert "--writers 0" in one_line_error(sensor_cli("collect", "--nats-url", dead, "--postgres", dsn, "--writers", "0"))
    data = str(tmp_path / "data")
    assert "no URL given" in one_line_error(sensor_cli("run", "--data-dir", data, "--sink", "store,nats", "--duration", "1"))
    msg = one_line_error(sensor_cli("run", "--data-dir", data, "--sink", "nats", "--nats-url", "nats://127.0.0.1:1",
                                    "--nats-tls-ca", str(tmp_path / "missing.pem"), "--duration", "1"))
    assert "missing.pem" in msg


def test_the_outbox_holds_events_across_a_restart_and_counts_what_overflows(tmp_path, nats):
    dead = f"nats://127.0.0.1:{free_port()}"
    sink = NatsSink(BrokerOptions.parse(dead), tmp_path / "outbox", max_bytes=300 << 10)
    ids = produce(sink, 3000)  # ~450 bytes each: about 650 fit in 300 KiB
    wait_for(lambda: sink.stats()["queued"] + sink.stats()["overflow"] == 3000 and not sink._queue, 30, 0.05,
             "every event queued or counted")
    kept, overflow = sink.stats()["queued"], sink.stats()["overflow"]
    assert 0 < kept < 3000 and kept + overflow == 3000 and sink.sent == 0
    assert "cannot connect" in sink.stats()["error"]
    sink.close(0)  # the sensor stops with the broker still unreachable

    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")  # restarted, broker back
    wait_for(lambda: sink.sent >= kept, 60, 0.05, "the kept events sent")
    sink.close(10)
    assert sink.sent == kept and sink.outbox.pending == 0
    assert stream_ids(nats.url) == ids[:kept]  # the oldest, in order, once each


def stream_ids(url: str) -> list[str]:
    """The event.id of every message in the stream, in stream order."""
    import asyncio

    import nats as nats_client

    async def read():
        nc = await nats_client.connect(url)
        try:
            js = nc.jetstream()
            n = (await js.stream_info("SENSOR")).state.messages
            return [json.loads((await js.get_msg("SENSOR", seq)).data)["event"]["id"] for seq in range(1, n + 1)]
        finally:
            await nc.close()

    return asyncio.run(read())


def test_events_follow_prints_what_collectors_commit(tmp_path, nats, dsn, collectors):
    collector = collectors(nats.url, dsn)
    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    first = produce(sink, 100)
    wait_for(lambda: len(stored_ids(dsn)) >= 100, 60, 0.1, "the first events stored")
    out = tmp_path / "follow.jsonl"
    with open(out, "wb") as f:
        follow = subprocess.Popen([sys.executable, "-m", "sensor", "events", "--postgres", dsn, "--follow",
                                   "--where", "event.dataset=process"], stdout=f, cwd=ROOT)
    try:
        wait_for(lambda: out.read_bytes().count(b"\n") >= 100, 60, 0.1, "the stored events printed")
        second = produce(sink, 100)
        wait_for(lambda: out.read_bytes().count(b"\n") >= 200, 60, 0.1, "the new events printed")
    finally:
        follow.kill()
        follow.wait(10)
        sink.close(5)
    assert [json.loads(line)["event"]["id"] for line in out.read_text().splitlines()] == first + second
    assert collector.stop() == 0


def test_the_nats_py_internals_the_collector_relies_on_are_as_expected():
    """sensor/fleet/rawnats.py takes messages from nats-py's parser and sends many protocol
    lines as one command: private methods and fields, checked here so an upgrade fails plainly."""
    import inspect

    from nats.aio.client import Client

    def params(name):
        return list(inspect.signature(getattr(Client, name)).parameters)
    assert params("_process_msg") == ["self", "sid", "subject", "reply", "data", "headers"]
    assert params("_send_command")[:2] == ["self", "cmd"]
    assert params("_flush_pending")[0] == "self"
    client = Client()
    assert isinstance(client._max_pending_size, int) and isinstance(client._pending_data_size, int)
    from nats.aio.msg import Msg  # a bad message's stream sequence, for the collector's warning

    assert Msg.Metadata._from_reply("$JS.ACK.SENSOR.collect.1.42.7.1700000000000000000.0").sequence.stream == 42


def test_an_event_over_the_servers_max_payload_is_dropped_and_counted_not_a_stall(tmp_path, nats):
    """The server closes a connection that sends a message over its max_payload (1 MiB by
    default): such an event is refused before it is sent, counted, and the rest flow on."""
    from sensor.host import Host
    from sensor.schema import Stamper

    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    before = produce(sink, 50)
    big = Stamper(Host()).stamp({"event": {"dataset": "process", "action": "exec", "category": ["process"]},
                                 "process": {"pid": 1, "command_line": "x" * (2 << 20)}})
    sink.write(big)
    after = produce(sink, 50)
    wait_for(lambda: sink.sent == 100 and sink.refused == 1, 30, 0.05, "the small events sent, the big one counted")
    sink.close(10)
    assert sink.stats()["queued"] == 0 and sink.stats()["refused"] == 1
    assert stream_ids(nats.url) == before + after
