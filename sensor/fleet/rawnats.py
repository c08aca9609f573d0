"""nats-py below its public API, where the fleet's hot paths need it: a subscription's messages
taken from the protocol parser as bytes, and many protocol lines sent as one command.

Per message, nats-py builds a `Msg`, parses its headers (every stored JetStream message has
Nats-Msg-Id), and passes it through the subscription's queue and task; per publish it builds
the header block and command line in Python and checks for a flush. At thousands of messages a
second that is most of a collector's or a publishing host's CPU. Three private methods are used:
`Client._process_msg`, `_send_command` and `_flush_pending` (nats-py is pinned in pyproject.toml;
tests/test_fleet.py checks their signatures)."""
from __future__ import annotations


def intercept(nc, sub, handler) -> None:
    """`await handler(subject, reply, data, headers)` (bytes; headers raw or None) for every
    message of `sub`, in place of nats-py's own delivery; other subscriptions are untouched."""
    deliver, sid = nc._process_msg, sub._id

    async def process_msg(s, subject, reply, data, headers):
        if s != sid:
            return await deliver(s, subject, reply, data, headers)
        await handler(subject, reply, data, headers)

    nc._process_msg = process_msg


def status(data: bytes, headers: bytes | None) -> bytes | None:
    """A status message's code (b"408", b"503", ...): no data, and the code in the header's first
    line, `NATS/1.0 408 Request Timeout`; None for a message."""
    if not data and headers and headers[8:9] == b" ":
        return headers[9:12]
    return None


def description(headers: bytes) -> str:
    return headers.split(b"\r\n", 1)[0][12:].strip().decode(errors="replace")


async def send(nc, command: bytes) -> None:
    """Queues protocol lines (PUB, HPUB, ...) as one command and has them flushed; raises what
    nats-py's publish would for a closed connection or a full reconnect buffer."""
    from nats.errors import ConnectionClosedError, OutboundBufferLimitError

    if nc.is_closed:
        raise ConnectionClosedError
    if not nc.is_connected and (nc._max_pending_size <= 0
                                or len(command) + nc._pending_data_size > nc._max_pending_size):
        raise OutboundBufferLimitError
    await nc._send_command(command)
    await nc._flush_pending()
