"""Fault tests with real servers: each ends with every event stored exactly once."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

from conftest import wait_for
from fleetservers import (NatsServer, collectors, dsn, nats, nats_cluster, postgres, produce,  # noqa: F401
                          stored_ids, stream_messages)
from sensor.fleet.broker import BrokerOptions
from sensor.fleet.nats_sink import NatsSink

OUTAGE = 5.0  # seconds the whole broker is down: the 30 s behaves the same (reconnect
# attempts back off to at most 5 s, the outbox holds what comes meanwhile), in a sixth of the time


def exactly_once(dsn, ids, timeout=120):
    wait_for(lambda: len(stored_ids(dsn)) >= len(ids), timeout, 0.2, f"{len(ids):,} events stored")
    got = stored_ids(dsn)
    assert len(got) == len(set(got)) == len(ids) and set(got) == set(ids)


def test_whole_broker_down_while_the_sensor_produces(tmp_path, start_sensor, nats, dsn, collectors):
    s = start_sensor("--sink", "store,nats", "--nats-url", nats.url, "--no-files-enabled", "--no-network-enabled",
                     "--no-security-enabled", "--rules", "none", "--health-interval", "0.5")
    work = subprocess.Popen(["sh", "-c", "while :; do /bin/true; sleep 0.01; done"])
    try:
        time.sleep(1)
        nats.stop(signal.SIGKILL)
        time.sleep(OUTAGE)  # the sensor keeps producing: exec events and health every 0.5 s
        nats.start()
        time.sleep(2)
    finally:
        work.kill()
        work.wait()
    assert s.stop() == 0
    events = s.events()
    health = [e["sensor"]["health"]["nats"] for e in events if e["event"].get("dataset") == "sensor.health"]
    assert any(h["queued"] > 0 and not h["connected"] for h in health)  # seen waiting in the outbox
    assert health[-1]["overflow"] == 0
    collectors(nats.url, dsn)
    exactly_once(dsn, [e["event"]["id"] for e in events])


def test_a_cluster_node_killed_mid_stream(tmp_path, dsn, collectors):
    nodes = nats_cluster(tmp_path / "cluster", 3)
    try:
        urls = ",".join(n.url for n in nodes)
        collector = collectors(urls, dsn, "--nats-replicas", "3")  # creates the stream, 3 replicas
        sink = NatsSink(BrokerOptions.parse(urls), tmp_path / "outbox")
        ids: list = []
        producer = threading.Thread(target=lambda: ids.extend(produce(sink, 15_000, rate=1500)))
        producer.start()
        wait_for(lambda: sink.sent > 3000, 60, 0.05, "3,000 events acknowledged")
        leader = _stream_leader(urls)
        next(n for n in nodes if n.name == leader).stop(signal.SIGKILL)  # the stream's leader: the worst case
        producer.join()
        sink.close(60)
        assert sink.outbox.pending == 0 and sink.stats()["overflow"] == 0
        exactly_once(dsn, ids)
        assert collector.stop() == 0
    finally:
        for n in nodes:
            n.stop()


def _stream_leader(urls: str) -> str:
    import asyncio

    import nats

    async def leader():
        nc = await nats.connect(urls.split(","))
        try:
            return (await nc.jetstream().stream_info("SENSOR")).cluster.leader
        finally:
            await nc.close()

    return asyncio.run(leader())


def test_collector_killed_mid_batch(tmp_path, nats, dsn, collectors):
    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    ids = produce(sink, 20_000)
    sink.close(60)
    assert stream_messages(nats.url) == 20_000
    first = collectors(nats.url, dsn, "--batch", "200", "--ack-wait", "2")
    wait_for(lambda: len(stored_ids(dsn)) >= 2000, 60, 0.01, "the first batches stored")
    first.stop(signal.SIGKILL)  # batches in flight: fetched, maybe inserted, never acknowledged
    stored_at_kill = len(stored_ids(dsn))
    assert stored_at_kill < 20_000
    second = collectors(nats.url, dsn, "--batch", "200")
    exactly_once(dsn, ids)
    assert second.stop() == 0
    assert second.stored() == 20_000 - stored_at_kill


def test_postgres_restarts_while_collecting(tmp_path, nats, postgres, dsn, collectors):
    collector = collectors(nats.url, dsn, "--batch", "200")
    sink = NatsSink(BrokerOptions.parse(nats.url), tmp_path / "outbox")
    ids: list = []
    producer = threading.Thread(target=lambda: ids.extend(produce(sink, 15_000, rate=2000)))
    producer.start()
    wait_for(lambda: len(stored_ids(dsn)) > 2000, 60, 0.05, "some events stored")
    postgres.stop()
    time.sleep(2)
    postgres.start()
    producer.join()
    sink.close(60)
    exactly_once(dsn, ids)
    assert collector.proc.poll() is None  # it waited for the server, it did not die
    assert collector.stop() == 0
    assert "retrying the batch" in collector.output()
