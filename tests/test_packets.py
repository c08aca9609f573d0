"""Packet metadata mode: real packets on the loopback interface, dissected."""
from __future__ import annotations

import socket
import ssl
import threading
import uuid

from conftest import wait_for


def packets(sensor):
    return sensor.events(event__dataset="network.packets")


def test_packet_metadata_dns_http_and_tls_sni(start_sensor):
    s = start_sensor("--packets-enabled", "--packets-interface", "lo", "--no-metrics-enabled", "--rules", "none",
                     "--no-files-enabled", "--no-security-enabled")
    tag = uuid.uuid4().hex[:8]
    # DNS: a query to a port-53 address nobody answers on
    from scapy.layers.dns import DNS, DNSQR

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(bytes(DNS(id=1, rd=1, qd=DNSQR(qname=f"q-{tag}.sensor.test"))), ("127.0.0.88", 53))
    # HTTP and TLS: requests to a listener that accepts and reads
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(2):
            c, _ = srv.accept()
            c.settimeout(2)
            try:
                c.recv(4096)
            except OSError:
                pass
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(f"GET /x HTTP/1.1\r\nHost: web-{tag}.sensor.test\r\n\r\n".encode())
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port)) as c:
        try:
            ctx.wrap_socket(c, server_hostname=f"tls-{tag}.sensor.test").close()
        except (ssl.SSLError, OSError):
            pass  # the listener speaks no TLS: the ClientHello went out, which is all we need
    t.join(10)
    srv.close()

    def seen():
        evs = packets(s)
        return (any(e.get("dns", {}).get("question", {}).get("name") == f"q-{tag}.sensor.test" for e in evs)
                and any(e.get("url", {}).get("domain") == f"web-{tag}.sensor.test" for e in evs)
                and any(e.get("tls", {}).get("client", {}).get("server_name") == f"tls-{tag}.sensor.test" for e in evs))
    wait_for(seen, what="dns, http and tls packets")
    assert s.stop() == 0
    evs = packets(s)
    [dns] = [e for e in evs if e.get("dns", {}).get("question", {}).get("name") == f"q-{tag}.sensor.test"]
    assert dns["network"]["protocol"] == "dns" and dns["network"]["transport"] == "udp"
    assert dns["destination"] == {"ip": "127.0.0.88", "port": 53, "mac": "00:00:00:00:00:00"}
    [http] = [e for e in evs if e.get("url", {}).get("domain") == f"web-{tag}.sensor.test"]
    assert http["http"]["request"]["method"] == "GET" and http["destination"]["port"] == port
    assert http["network"]["transport"] == "tcp" and http["network"]["type"] == "ipv4"
    [tls] = [e for e in evs if e.get("tls", {}).get("client", {}).get("server_name") == f"tls-{tag}.sensor.test"]
    assert tls["network"]["protocol"] == "tls" and tls["network"]["bytes"] > 200
    # plain TCP segments have ports and no application protocol
    assert any(e["network"].get("transport") == "tcp" and "protocol" not in e["network"] for e in evs)
    health = s.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["sources"]["network.packets"]
    assert health["lost_user"] == 0 and health["emitted"] == len(evs)


def test_packet_rate_limit_counts_what_it_skips(start_sensor):
    s = start_sensor("--packets-enabled", "--packets-interface", "lo", "--packets-per-second", "5",
                     "--no-metrics-enabled", "--rules", "none", "--no-files-enabled", "--no-security-enabled")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for i in range(300):
            u.sendto(b"x", ("127.0.0.1", 9))
    wait_for(lambda: any(h["sensor"]["health"]["sources"]["network.packets"]["lost_user"] > 0
                         for h in s.events(event__dataset="sensor.health")), what="rate-limited packets")
    assert s.stop() == 0
    health = s.events(event__dataset="sensor.health")[-1]["sensor"]["health"]["sources"]["network.packets"]
    assert health["emitted"] + health["lost_user"] + health["lost_kernel"] >= 300  # socket drops count too
    assert health["emitted"] <= 20  # 5 a second, and a full bucket at start
