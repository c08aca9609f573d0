"""`sensor dashboard`: checks where it may listen, opens the store, serves the app until SIGTERM."""
from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import secrets
import signal
import sys
import threading

from ..errors import SensorError

log = logging.getLogger("sensor.dashboard")


def parse_listen(value: str) -> tuple[str, int]:
    """ADDR:PORT ([v6]:PORT too) -> (address, port), or a one-line error."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        n = int(port)
        if not sep or not 0 <= n <= 65535:
            raise ValueError
    except ValueError:
        raise SensorError(f"--listen {value!r}: expected ADDR:PORT with an IP address, e.g. 127.0.0.1:8080") from None
    return host, n


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def check_exposure(host: str, token: str | None, password_file: str | None, cert: str | None, key: str | None):
    """Off loopback the panel needs a login secret and TLS: it refuses to listen otherwise."""
    if bool(cert) != bool(key):
        raise SensorError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.path.isfile(path):
            raise SensorError(f"{flag} {path}: no such file")
    if is_loopback(host):
        return
    if not (token or password_file):
        raise SensorError(f"refusing to listen on {host} without --token or --password-file",
                          hint="anyone who reaches it would read this host's telemetry")
    if not cert:
        raise SensorError(f"refusing to listen on {host} without TLS (--tls-cert and --tls-key)",
                          hint="the token and session cookie would cross the network in clear")


def open_backend(args):
    if args.postgres:
        from .postgres import PostgresBackend

        return PostgresBackend(args.postgres)
    from .local import LocalBackend

    return LocalBackend(args.data_dir)


def run(args) -> int:
    from werkzeug.serving import make_server

    from .app import create_app
    from .auth import Auth

    host, port = parse_listen(args.listen)
    check_exposure(host, args.token, args.password_file, args.tls_cert, args.tls_key)
    passwords = Auth.read_password_file(args.password_file) if args.password_file else {}
    token = args.token
    if not token and not passwords:
        token = secrets.token_urlsafe(24)  # as Jupyter does: a fresh token, printed in the address
    if token is not None and len(token) < 8:
        raise SensorError("--token: use at least 8 characters")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines would log ?token=
    backend = open_backend(args)
    auth = Auth(token, passwords, args.user or getpass.getuser())
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    app = create_app(backend, auth, secure_cookie=bool(tls))
    try:
        server = make_server(host, port, app, threaded=True, ssl_context=tls)
    except OSError as exc:
        raise SensorError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    server.daemon_threads = True  # live streams never hold up the exit
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    where = f"{scheme}://{shown}:{server.server_port}/"
    print(f"sensor dashboard: {backend.kind} store; open {where}" + (f"?token={token}" if token else "")
          + "; SIGTERM stops", file=sys.stderr, flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        backend.close()
    print("sensor dashboard: stopped", file=sys.stderr)
    return 0
