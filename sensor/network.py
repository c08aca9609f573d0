"""Network events in the schema: the one place NetActivity records become `event.dataset:
network` events, and DNS payloads (parsed with scapy) and resolver lookups `network.dns` events."""
from __future__ import annotations

import ipaddress
import logging

from .records import DnsLookup, NetActivity
from .schema import text

log = logging.getLogger("sensor.network")

# op -> (event.type, ingress?)
OPS = {"connect": (["connection", "start"], False), "accept": (["connection", "start"], True),
       "close": (["connection", "end"], None), "udp-send": (["connection", "info"], False),
       "udp-receive": (["connection", "info"], True), "bind": (["info"], None), "listen": (["start"], None),
       "tcp-send": (["connection", "info"], False), "tcp-receive": (["connection", "info"], True)}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _endpoint(addr: tuple[str, int]) -> dict:
    ip, port = addr
    out = {"ip": ip}
    if port:
        out["port"] = port
    return out


def network_event(r: NetActivity, table) -> dict:
    types, ingress = OPS[r.op]
    if ingress is None:
        ingress = r.inbound if r.op == "close" else False
    local, remote = _endpoint(r.local), _endpoint(r.remote)
    if r.local_domain:
        local["domain"] = r.local_domain
    if r.remote_domain:
        remote["domain"] = r.remote_domain
    network = {"transport": r.transport, "type": "ipv6" if ":" in r.local[0] else "ipv4",
               "direction": "ingress" if ingress else "egress", "netns": r.netns}
    event = {"event": {"kind": "event", "category": ["network"], "type": types, "action": r.op,
                       "dataset": "network", "module": "ebpf"},
             "network": network, **table.actor(r.pid, r.start_ns, r.tid, r.comm)}
    if r.op in ("bind", "listen"):
        event["source"] = local  # the address this host offers
    else:
        source, destination = (remote, local) if ingress else (local, remote)
        event["source"], event["destination"] = source, destination
        sent, received = r.bytes_sent, r.bytes_received  # this host's view
        if sent or received:
            network["bytes"] = sent + received
            event["source"]["bytes"] = received if ingress else sent
            event["destination"]["bytes"] = sent if ingress else received
    if r.op == "connect" and r.failed:
        event["event"]["outcome"] = "failure"
    if r.op == "close":
        event["event"]["duration"] = r.duration_ns
    if r.payload:
        dns = parse_dns(_dns_message(r.payload, r.transport))
        if dns is not None:
            event["event"]["dataset"] = "network.dns"
            event["event"]["category"] = ["network"]
            network["protocol"] = "dns"
            event["dns"] = dns
        if r.payload_cut:
            event.setdefault("sensor", {}).setdefault("truncated", []).append("dns")
    return event


def _dns_message(payload: bytes, transport: str) -> bytes:
    """Over TCP a message has a two-byte length first (RFC 1035 4.2.2), sent with it or, by
    readers that take the length first, in a call of its own."""
    if transport == "tcp" and len(payload) > 2 and int.from_bytes(payload[:2], "big") == len(payload) - 2:
        return payload[2:]
    return payload


def parse_dns(payload: bytes) -> dict | None:
    """dns.* fields of one DNS message, or None when it is not one."""
    from scapy.layers.dns import DNS, dnsqtypes  # slow to import: only once DNS is seen

    if len(payload) < 12:  # shorter than a DNS header
        return None
    try:
        msg = DNS(payload)
    except Exception as exc:  # scapy raises many kinds on garbage
        log.debug("not a DNS message (%d bytes): %s", len(payload), exc)
        return None
    out: dict = {"id": str(msg.id), "type": "answer" if msg.qr else "query",
                 "op_code": str(msg.opcode),
                 "header_flags": [f for f, on in (("AA", msg.aa), ("TC", msg.tc), ("RD", msg.rd),
                                                  ("RA", msg.ra)) if on]}
    questions = list(msg.qd or [])
    if questions:
        q = questions[0]
        name, escaped = text(q.qname.rstrip(b"."))
        out["question"] = {"name": name, "type": dnsqtypes.get(q.qtype, str(q.qtype)), "class": "IN"
                           if q.qclass == 1 else str(q.qclass)}
    if msg.qr:
        out["response_code"] = RCODES.get(msg.rcode, str(msg.rcode))
        answers = []
        for rr in list(msg.an or []):
            data = rr.rdata
            if isinstance(data, bytes):
                data = text(data.rstrip(b"."))[0]
            elif isinstance(data, list):
                data = " ".join(text(x)[0] if isinstance(x, bytes) else str(x) for x in data)
            answers.append({"name": text(rr.rrname.rstrip(b"."))[0], "type": dnsqtypes.get(rr.type, str(rr.type)),
                            "ttl": rr.ttl, "data": str(data)})
        out["answers"] = answers
        out["resolved_ip"] = [a["data"] for a in answers if a["type"] in ("A", "AAAA")]
    return out


def _dns_status(status: int | None) -> str | None:
    """Windows resolver status: 0, DNS_ERROR_RCODE_* (9000 + rcode), or another Win32 error."""
    if status is None:
        return None
    if status == 0 or 9000 < status < 9016:
        return RCODES.get(status % 9000, str(status % 9000))
    return str(status)


def dns_event(r: DnsLookup, table) -> dict:
    """A name the OS's resolver looked up, with its outcome: one `network.dns` query event (no
    packet was seen, so no ids or flags)."""
    question = {"name": r.name}
    if r.qtype:
        question["type"] = r.qtype
    dns = {"type": "query", "question": question}
    code = _dns_status(r.status)
    if code is not None:
        dns["response_code"] = code
    resolved = [ip for ip in (_ip(x) for x in r.results) if ip]
    if resolved:
        dns["resolved_ip"] = resolved
    return {"event": {"kind": "event", "category": ["network"], "type": ["protocol"], "action": "dns-query",
                      "dataset": "network.dns", "module": "etw"},
            "network": {"protocol": "dns"}, "dns": dns, **table.actor(r.pid, r.start_ns, r.tid, r.comm)}


def _ip(item: str) -> str | None:
    """An address of a resolver's result list (`::ffff:1.2.3.4` as 1.2.3.4), or None (CNAMEs)."""
    item = item.strip()
    if item.startswith("::ffff:") and "." in item:
        item = item[7:]
    try:
        return str(ipaddress.ip_address(item))
    except ValueError:
        return None
