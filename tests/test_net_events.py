"""Network events from the kernel (bpf/activity/net.c): real sockets, real processes, a real netns."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import wait_for

SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.bind((sys.argv[1], 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
got = 0
while got < 1000:
    got += len(c.recv(65536))
c.sendall(b"y" * 2500)
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
"""

CLIENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"x" * 1000)
got = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    got += len(b)
assert got == 2500
c.close()
"""


def tcp_exchange(host: str, prefix=()) -> tuple[int, int, int]:
    """A server and a client process exchange 1000 and 2500 bytes; returns (server pid, client pid, port)."""
    server = subprocess.Popen([*prefix, sys.executable, "-c", SERVER, host], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    client = subprocess.Popen([*prefix, sys.executable, "-c", CLIENT, host, str(port)])
    assert client.wait(30) == 0 and server.wait(30) == 0
    return server.pid, client.pid, port


@pytest.fixture
def sensor(start_sensor):
    return start_sensor("--no-metrics-enabled", "--rules", "none", "--no-files-enabled")


def net_events(sensor, pid, **where):
    return [e for e in sensor.events(event__category=["network"], **where) if e["process"]["pid"] == pid]


def check_tcp(sensor, host, server_pid, client_pid, port, netns=None):
    wait_for(lambda: len([e for e in sensor.events(event__action="close") if e["process"]["pid"] in
                          (server_pid, client_pid)]) == 2, what="both closes")
    srv = {e["event"]["action"]: e for e in net_events(sensor, server_pid)}
    cli = {e["event"]["action"]: e for e in net_events(sensor, client_pid)}
    assert set(srv) == {"bind", "listen", "accept", "close"}, list(srv)
    assert set(cli) == {"connect", "close"}, list(cli)
    connect, accept = cli["connect"], srv["accept"]
    assert connect["destination"]["ip"] == host and connect["destination"]["port"] == port
    assert connect["network"]["direction"] == "egress" and accept["network"]["direction"] == "ingress"
    # both ends agree on the client's port, seen from either side
    assert accept["source"]["port"] == connect["source"]["port"] and accept["destination"]["port"] == port
    assert connect["network"]["transport"] == "tcp"
    assert connect["network"]["type"] == ("ipv6" if ":" in host else "ipv4")
    assert srv["listen"]["source"]["port"] == port and srv["bind"]["source"]["ip"] == host
    # bytes as each side counted them: the client sent 1000 and received 2500
    assert cli["close"]["source"]["bytes"] == 1000 and cli["close"]["destination"]["bytes"] == 2500
    assert srv["close"]["network"]["direction"] == "ingress"
    assert srv["close"]["source"]["bytes"] == 1000 and srv["close"]["destination"]["bytes"] == 2500
    assert cli["close"]["event"]["duration"] > 0
    for e in (*srv.values(), *cli.values()):
        assert e["event"]["module"] == "ebpf" and e["process"]["entity_id"]
        if netns is not None:
            assert e["network"]["netns"] == netns


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_connect_accept_close_both_ends(sensor, host):
    server_pid, client_pid, port = tcp_exchange(host)
    check_tcp(sensor, host, server_pid, client_pid, port, netns=os.stat("/proc/self/ns/net").st_ino)
    assert sensor.stop() == 0


def test_tcp_in_a_private_network_namespace(sensor):
    name = f"sensor-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        netns = os.stat(f"/run/netns/{name}").st_ino
        assert netns != os.stat("/proc/self/ns/net").st_ino
        server_pid, client_pid, port = tcp_exchange("127.0.0.1", prefix=("ip", "netns", "exec", name))
        check_tcp(sensor, "127.0.0.1", server_pid, client_pid, port, netns=netns)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
    assert sensor.stop() == 0


def test_refused_connect_is_a_failure(sensor):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
                       capture_output=True)
    assert p.returncode != 0
    wait_for(lambda: [e for e in sensor.events(event__action="connect") if e["destination"]["port"] == port],
             what="the refused connect")
    [e] = [e for e in sensor.events(event__action="connect") if e["destination"]["port"] == port]
    assert e["event"]["outcome"] == "failure"
    assert sensor.stop() == 0


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"ping %d" % i, ("127.0.0.1", int(sys.argv[1])))
    s.recvfrom(100)
"""


def test_udp_flow_is_reported_once_per_interval(sensor):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo():
        for _ in range(3):
            data, peer = server.recvfrom(100)
            server.sendto(data, peer)

    t = threading.Thread(target=echo)
    t.start()
    client = subprocess.Popen([sys.executable, "-c", UDP_CLIENT, str(port)])
    assert client.wait(30) == 0
    t.join(10)
    server.close()
    wait_for(lambda: net_events(sensor, client.pid, event__action="udp-receive"), what="udp events")
    sends = net_events(sensor, client.pid, event__action="udp-send")
    receives = net_events(sensor, client.pid, event__action="udp-receive")
    assert len(sends) == 1 and len(receives) == 1  # three datagrams each way, one flow each
    assert sends[0]["destination"] == {"ip": "127.0.0.1", "port": port, "bytes": 0}
    assert sends[0]["source"]["bytes"] == len(b"ping 0")
    assert receives[0]["source"]["port"] == port and receives[0]["network"]["direction"] == "ingress"
    assert sends[0]["network"]["transport"] == "udp"
    assert sensor.stop() == 0


DNS_CLIENT = """
import socket, sys
from scapy.layers.dns import DNS, DNSQR
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(bytes(DNS(id=4242, rd=1, qd=DNSQR(qname=sys.argv[2], qtype="A"))), (sys.argv[1], 53))
print(DNS(s.recvfrom(512)[0]).an.rdata)
"""


def test_dns_query_and_answer_are_parsed(sensor):
    from scapy.layers.dns import DNS, DNSRR

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.77", 53))  # a loopback address of its own: port 53 may be taken on 127.0.0.1

    def answer():
        data, peer = server.recvfrom(512)
        q = DNS(data)
        reply = DNS(id=q.id, qr=1, aa=1, rd=1, ra=1, qd=q.qd,
                    an=DNSRR(rrname=q.qd[0].qname, type="A", rdata="10.9.8.7", ttl=300))
        server.sendto(bytes(reply), peer)

    t = threading.Thread(target=answer)
    t.start()
    name = f"host-{uuid.uuid4().hex[:6]}.sensor.test"
    client = subprocess.Popen([sys.executable, "-c", DNS_CLIENT, "127.0.0.77", name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = client.communicate(timeout=30)
    t.join(10)
    server.close()
    assert client.returncode == 0 and out.strip() == "10.9.8.7", err
    wait_for(lambda: [e for e in sensor.events(event__dataset="network.dns") if e["dns"]["type"] == "answer"],
             what="the DNS answer")
    dns = [e for e in sensor.events(event__dataset="network.dns") if e["dns"].get("question", {}).get("name") == name]
    mine = [e for e in dns if e["process"]["pid"] == client.pid]  # the responder (this test) is seen too
    query = [e for e in mine if e["dns"]["type"] == "query"]
    answer = [e for e in mine if e["dns"]["type"] == "answer"]
    assert len(query) == 1 and len(answer) == 1
    assert query[0]["event"]["action"] == "udp-send" and answer[0]["event"]["action"] == "udp-receive"
    assert {e["event"]["action"] for e in dns if e["process"]["pid"] == os.getpid()} == {"udp-receive", "udp-send"}
    assert query[0]["dns"]["question"]["type"] == "A" and query[0]["dns"]["id"] == "4242"
    assert query[0]["destination"]["ip"] == "127.0.0.77" and query[0]["destination"]["port"] == 53
    assert answer[0]["dns"]["response_code"] == "NOERROR"
    assert answer[0]["dns"]["resolved_ip"] == ["10.9.8.7"]
    assert answer[0]["dns"]["answers"][0]["ttl"] == 300
    assert query[0]["process"]["executable"] == os.path.realpath(sys.executable)
    assert sensor.stop() == 0


DNS_TCP_CLIENT = """
import socket, struct, sys
from scapy.layers.dns import DNS, DNSQR
q = bytes(DNS(id=77, rd=1, qd=DNSQR(qname=sys.argv[2], qtype="AAAA")))
with socket.create_connection((sys.argv[1], 53)) as s:
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
print(DNS(data).an.rdata)
"""


def test_dns_over_tcp(sensor):
    import struct

    from scapy.layers.dns import DNS, DNSRR

    import random

    addr = f"127.0.78.{random.randint(2, 250)}"  # a fresh address: port 53 of the last run may wait in TIME_WAIT
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, 53))
    server.listen(1)

    def answer():
        c, _ = server.accept()
        n = struct.unpack("!H", c.recv(2))[0]
        q = DNS(c.recv(n))
        reply = bytes(DNS(id=q.id, qr=1, qd=q.qd, an=DNSRR(rrname=q.qd[0].qname, type="AAAA", rdata="fd00::7")))
        c.sendall(struct.pack("!H", len(reply)) + reply)
        c.close()

    t = threading.Thread(target=answer)
    t.start()
    name = f"tcp-{uuid.uuid4().hex[:6]}.sensor.test"
    client = subprocess.Popen([sys.executable, "-c", DNS_TCP_CLIENT, addr, name], stdout=subprocess.PIPE,
                              text=True)
    out, _ = client.communicate(timeout=30)
    t.join(10)
    server.close()
    assert out.strip() == "fd00::7"
    wait_for(lambda: [e for e in sensor.events(event__dataset="network.dns") if e["process"]["pid"] == client.pid
                      and e["dns"]["type"] == "answer"], what="the DNS answer over TCP")
    mine = [e for e in sensor.events(event__dataset="network.dns") if e["process"]["pid"] == client.pid]
    [query] = [e for e in mine if e["dns"]["type"] == "query"]
    [answer] = [e for e in mine if e["dns"]["type"] == "answer"]
    assert query["dns"]["question"] == {"name": name, "type": "AAAA", "class": "IN"}
    assert query["network"]["transport"] == "tcp" and query["event"]["action"] == "tcp-send"
    assert answer["dns"]["resolved_ip"] == ["fd00::7"] and answer["event"]["action"] == "tcp-receive"
    assert sensor.stop() == 0


def test_connect_storm_loses_no_state_change(start_sensor, tmp_path):
    """10,000 loopback connects: softirqs then fire the TCP state tracepoint inside its own
    program now and then, which the kernel would skip; every connect and close is still there.
    The ring holds the whole storm (64 MiB), so a consumer slowed by other work on the machine
    (seen in CI: 2,255 records the 4 MiB ring refused) is not what this measures."""
    from conftest import ROOT

    sensor = start_sensor("--no-metrics-enabled", "--rules", "none", "--no-files-enabled",
                          "--network-ring-buffer-bytes", "64MiB")

    storm = tmp_path / "connstorm"
    subprocess.run(["gcc", "-O2", "-o", str(storm), str(ROOT / "bench" / "connstorm.c")], check=True)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]

    accepted = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.close()
            accepted.append(1)

    threading.Thread(target=serve, daemon=True).start()
    try:
        p = subprocess.run([str(storm), str(port), "10000"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        # the storm is done once it has connected: this end may still be accepting its backlog
        wait_for(lambda: len(accepted) == 10000, timeout=60, what="every connection accepted")
        assert sensor.stop() == 0
    finally:
        srv.close()
    mine = [e for e in sensor.events(event__category=["network"]) if e["network"]["transport"] == "tcp"
            and port in (e.get("destination", {}).get("port"), e.get("source", {}).get("port"))]
    got = {}
    for e in mine:
        key = (e["event"]["action"], e["process"]["pid"] == os.getpid())
        got[key] = got.get(key, 0) + 1
    health = sensor.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["sources"]
    assert health["network"]["lost_kernel"] == 0
    # the storm connects and closes; this process accepts and closes
    assert got == {("connect", False): 10000, ("close", False): 10000, ("accept", True): 10000,
                   ("close", True): 10000, ("bind", True): 1, ("listen", True): 1}, got
