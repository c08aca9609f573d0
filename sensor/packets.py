"""Packet metadata (`event.dataset: network.packets`), the original collector's packet CSV as
events: an AF_PACKET socket whose kernel filter keeps only the first bytes of each packet,
dissected with scapy, rate-limited. Off by default: it sees every packet, not processes."""
from __future__ import annotations

import ctypes
import logging
import socket
import struct

from .errors import SensorError
from .ratelimit import TokenBucket

log = logging.getLogger("sensor.packets")

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
SNAPLEN = 512  # headers and the start of the payload: enough for DNS, an HTTP request line and Host, a TLS SNI


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _snap_filter(snaplen: int):
    """A one-instruction classic BPF program, `ret #snaplen`: the kernel copies no more than that
    of each packet to the socket."""
    prog = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, snaplen))  # BPF_RET | BPF_K
    return prog, _SockFprog(1, prog)


def tls_sni(payload: bytes) -> str | None:
    """The server name of a TLS ClientHello, read by hand (scapy's TLS layer is slow to load)."""
    try:
        if len(payload) < 43 or payload[0] != 0x16 or payload[5] != 0x01:  # handshake, ClientHello
            return None
        pos = 43  # record header 5, handshake header 4, version 2, random 32
        pos += 1 + payload[pos]  # session id
        pos += 2 + struct.unpack_from("!H", payload, pos)[0]  # cipher suites
        pos += 1 + payload[pos]  # compression methods
        end = pos + 2 + struct.unpack_from("!H", payload, pos)[0]
        pos += 2
        while pos + 4 <= min(end, len(payload)):
            kind, length = struct.unpack_from("!HH", payload, pos)
            pos += 4
            if kind == 0:  # server_name: list length 2, type 1, name length 2, name
                n = struct.unpack_from("!H", payload, pos + 3)[0]
                return payload[pos + 5:pos + 5 + n].decode("ascii", "replace")
            pos += length
    except (IndexError, struct.error):
        return None
    return None


def http_host(payload: bytes) -> tuple[str, str] | None:
    """(method, host) of an HTTP/1 request."""
    head = payload.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1") or not parts[0].isalpha():
        return None
    for line in lines[1:]:
        if line[:5].lower() == b"host:":
            return parts[0].decode("ascii", "replace"), line[5:].strip().decode("ascii", "replace")
    return parts[0].decode("ascii", "replace"), ""


def dissect(frame: bytes) -> dict:
    """One frame's metadata as an event (no process: packets do not say whose they are)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Ether

    from .network import parse_dns

    pkt = Ether(frame)
    network: dict = {"bytes": len(frame)}
    event = {"event": {"kind": "event", "category": ["network"], "type": ["info"], "action": "packet",
                       "dataset": "network.packets", "module": "af_packet"},
             "network": network, "source": {"mac": pkt.src}, "destination": {"mac": pkt.dst}}
    if ARP in pkt:
        network["transport"] = "arp"
        event["source"]["ip"], event["destination"]["ip"] = pkt[ARP].psrc, pkt[ARP].pdst
        return event
    ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
    if ip is None:
        network["type"] = f"ethertype-{pkt.type:#06x}"
        return event
    network["type"] = "ipv4" if IP in pkt else "ipv6"
    # the frame may be cut at SNAPLEN: its length on the wire is in the IP header
    network["bytes"] = 14 + (ip.len if IP in pkt else 40 + ip.plen)
    event["source"]["ip"], event["destination"]["ip"] = ip.src, ip.dst
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP] if UDP in pkt else None
    if l4 is None:
        network["transport"] = "icmp" if ICMP in pkt else str(ip.proto if IP in pkt else ip.nh)
        return event
    network["transport"] = "tcp" if TCP in pkt else "udp"
    event["source"]["port"], event["destination"]["port"] = l4.sport, l4.dport
    payload = bytes(l4.payload)
    if not payload:
        return event
    if 53 in (l4.sport, l4.dport):
        dns = parse_dns(payload[2:] if network["transport"] == "tcp" else payload)
        if dns is not None:
            network["protocol"], event["dns"] = "dns", dns
    elif (sni := tls_sni(payload)) is not None:
        network["protocol"] = "tls"
        event["tls"] = {"client": {"server_name": sni}}
    elif (req := http_host(payload)) is not None:
        network["protocol"] = "http"
        event["http"] = {"request": {"method": req[0]}}
        event["url"] = {"domain": req[1]}
    return event


class PacketSource:
    """Reads an AF_PACKET socket (fd in the pipeline's epoll); `poll` returns finished events."""

    name = "network.packets"
    module = "af_packet"
    capabilities: frozenset[str] = frozenset()  # see sensor.source

    def __init__(self, interface: str | None = None, per_second: float = 1000.0):
        self.interface, self.per_second = interface, per_second
        self.sock: socket.socket | None = None
        self.rate_limited = self.kernel_drops = 0
        self._bucket = TokenBucket(per_second)

    def start(self):
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (PermissionError, AttributeError, OSError) as exc:
            raise SensorError(f"cannot open a packet socket: {exc}", hint="needs root (CAP_NET_RAW) on Linux") from None
        try:
            self._prog = _snap_filter(SNAPLEN)  # kept alive while attached
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(memoryview(self._prog[1])))
            if self.interface:
                s.bind((self.interface, 0))
            s.setblocking(False)
        except OSError as exc:
            s.close()
            raise SensorError(f"packet socket on {self.interface or 'all interfaces'}: {exc}") from None
        self.sock = s
        return self

    def fileno(self):
        return self.sock.fileno() if self.sock else None

    def poll(self, max_records: int = 4096) -> list[dict]:
        out = []
        while self.sock is not None and len(out) < max_records:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            if addr[0] == "lo" and addr[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every packet twice, going out and coming in
            if not self._bucket.take():
                self.rate_limited += 1
                continue
            try:
                event = dissect(frame)
            except Exception as exc:  # a frame scapy cannot parse must not stop the sensor
                log.debug("undissectable frame (%d bytes): %s", len(frame), exc)
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                event["network"]["direction"] = "egress"
            elif addr[2] in (socket.PACKET_HOST, socket.PACKET_BROADCAST, socket.PACKET_MULTICAST):
                event["network"]["direction"] = "ingress"
            event["observer"] = {"ingress": {"interface": {"name": addr[0]}}}
            out.append(event)
        return out

    def stats(self) -> dict:
        if self.sock is not None:
            try:  # reading the statistics resets them: accumulate
                packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.kernel_drops += drops
            except OSError:
                pass
        return {"lost_kernel": self.kernel_drops, "lost_user": self.rate_limited, "queue_bytes": 0}

    def detach(self):
        pass

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
