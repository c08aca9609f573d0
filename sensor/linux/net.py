"""Network activity source on Linux: bpf/activity/net.c's connection, datagram, bind and listen records."""
from __future__ import annotations

import ctypes
import ipaddress

from .. import wire
from ..records import NetActivity
from .activity import Activity, ActivityPart

_NET = wire.CTYPES["net_event"]
_PAYLOAD_AT = ctypes.sizeof(_NET)
OPS = {wire.NET_CONNECT: "connect", wire.NET_ACCEPT: "accept", wire.NET_CLOSE: "close",
       wire.NET_UDP_SEND: "udp-send", wire.NET_UDP_RECV: "udp-receive", wire.NET_BIND: "bind",
       wire.NET_LISTEN: "listen"}
_AF_INET, _AF_INET6 = 2, 10
_TRANSPORTS = {6: "tcp", 17: "udp"}
_CALLS = ("accept", "accept4", "bind", "listen", "sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg")


def _ip(family: int, raw: bytes) -> str:
    if family == _AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    addr = ipaddress.IPv6Address(raw[:16])
    return str(addr.ipv4_mapped or addr)  # a dual-stack socket talking IPv4


def decode(raw: bytes) -> NetActivity | None:
    r = _NET.from_buffer_copy(raw)
    op, family, flags = r.op, r.family, r.flags
    if r.type != wire.EVENT_NET or op not in OPS or family not in (_AF_INET, _AF_INET6):
        return None
    transport = _TRANSPORTS.get(r.protocol, str(r.protocol))
    name = OPS[op]
    if transport == "tcp" and op in (wire.NET_UDP_SEND, wire.NET_UDP_RECV):  # DNS over TCP
        name = "tcp-send" if op == wire.NET_UDP_SEND else "tcp-receive"
    return NetActivity(
        ts_ns=r.ts_ns, pid=r.pid, tid=r.tid, start_ns=r.start_ns, op=name, transport=transport,
        local=(_ip(family, bytes(r.laddr)), r.lport), remote=(_ip(family, bytes(r.raddr)), r.rport),
        netns=r.netns, duration_ns=r.duration_ns, bytes_sent=r.bytes_sent, bytes_received=r.bytes_received,
        failed=bool(flags & wire.NET_FAILED), inbound=bool(flags & wire.NET_INBOUND),
        payload=bytes(raw[_PAYLOAD_AT:_PAYLOAD_AT + r.payload_len]), payload_cut=bool(flags & wire.NET_PAYLOAD_CUT),
        comm=r.comm)


class NetSource(ActivityPart):
    """The network part of the shared activity programs; `poll` returns NetActivity records."""

    name = "network"
    ring = "net_events"
    event_types = (wire.EVENT_NET,)
    decode = staticmethod(decode)

    def __init__(self, activity: Activity, *, ring_buffer_bytes: int = 4 << 20, flow_interval: float = 60.0):
        super().__init__(activity, ring_buffer_bytes)
        self.flow_interval = flow_interval

    def rodata(self, numbers):
        out = {f"nr_{name}": numbers.get(name, 0xFFFFFFFF) for name in _CALLS}
        out["flow_interval_ns"] = int(self.flow_interval * 1e9)
        return out
