"""Real servers for the fleet tests: nats-server (alone, clustered, with TLS and users) and
PostgreSQL (as the postgres user, which it insists on), on free loopback ports in temp dirs."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import wait_for

# the newest installed major version (Debian 12: 15)
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=Path("/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server, sig, timeout):
    """Signals a server's process (SIGKILL if it lingers), waits, and closes its log."""
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
    if server.proc is not None:
        server.log.close()
    server.proc = None


class NatsServer:
    """One nats-server with JetStream; `extra` is appended to its config (cluster, tls, users)."""

    def __init__(self, directory: Path, name: str = "n1", extra: str = "", port: int | None = None):
        self.dir, self.name = directory, name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.http = port or free_port(), free_port()
        self.conf = self.dir / f"{name}.conf"
        self.conf.write_text(f"server_name: {name}\nlisten: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http}\n"
                             f"jetstream {{ store_dir: \"{self.dir / ('js-' + name)}\", max_file_store: 1G, "
                             f"max_memory_store: 64M }}\n{extra}\n")
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True):
        self.log = open(self.dir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server {self.name} exited: {self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz?js-enabled-only=true", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, timeout, 0.05, f"nats-server {self.name}")

    def tail(self) -> str:
        return (self.dir / f"{self.name}.log").read_text(errors="replace")[-2000:]

    def stop(self, sig=signal.SIGTERM):
        stop(self, sig, 15)


def nats_cluster(directory: Path, size: int = 3) -> list[NatsServer]:
    """A JetStream cluster of `size` nodes on loopback, routes to each other."""
    ports = [free_port() for _ in range(size)]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in ports)
    servers = []
    try:
        for i, p in enumerate(ports):
            extra = f"cluster {{ name: fleet, listen: 127.0.0.1:{p}, routes: [{routes}] }}"
            s = NatsServer(directory, f"n{i + 1}", extra)
            servers.append(s)
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


class Postgres:
    """A throwaway cluster run by the postgres user in a temp dir it owns."""

    def __init__(self, **settings):
        self.user = pwd.getpwnam("postgres")
        self.settings = [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        self.dir = Path(tempfile.mkdtemp(prefix="sensor-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc = None
        self._as_postgres([PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                           "--no-sync"], check=True)
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, cmd, **kw):
        return subprocess.run(list(map(str, cmd)), capture_output=True, user=self.user.pw_uid,
                              group=self.user.pw_gid, extra_groups=[], **kw)

    def start(self):
        self.log = open(self.dir / "postgres.log", "ab")
        os.chown(self.dir / "postgres.log", self.user.pw_uid, self.user.pw_gid)
        # postgres itself is the child (not runuser, which would not pass on our signals)
        self.proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                      "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                      "-c", "max_connections=50", *self.settings], stdout=self.log, stderr=self.log,
                                     user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[], cwd=self.dir)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited: {(self.dir / 'postgres.log').read_text()[-2000:]}")
            return self._as_postgres([PG_BIN / "pg_isready", "-h", "127.0.0.1", "-p", self.port]).returncode == 0

        wait_for(ready, 30, 0.1, "postgres to accept connections")

    def stop(self):
        stop(self, signal.SIGINT, 30)  # postgres's fast shutdown

    def query(self, sql: str, *params):
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def destroy(self):
        self.stop()
        # a test killed mid-way may leave a postmaster of ours running: stop it by its pid file
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)
                wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, 0.05, "postgres to exit")
            except (ValueError, ProcessLookupError, AssertionError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Collector:
    """A running `sensor collect` (a subprocess, as an operator runs it)."""

    def __init__(self, log: Path, url: str, dsn: str, *flags: str):
        import sys

        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "collect", "--nats-url", url, "--postgres", dsn,
                                      *flags], stdout=subprocess.DEVNULL, stderr=self._log,
                                     cwd=Path(__file__).resolve().parent.parent)
        wait_for(lambda: b"SIGTERM stops" in log.read_bytes() or self.proc.poll() is not None, 30, 0.05,
                 "the collector to start")
        if self.proc.poll() is not None:
            raise AssertionError(f"collector exited {self.proc.returncode}: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()

    def stored(self) -> int:
        """From its closing line: how many events it stored."""
        line = [x for x in self.output().splitlines() if "sensor collect: stopped" in x][-1]
        return int(line.split("stopped; ")[1].split(" events stored")[0].replace(",", ""))


def produce(sink, n: int, rate: float | None = None, dataset: str = "process", host_id: str | None = None) -> list[str]:
    """n stamped events through a real sink (optionally paced, optionally as another host.id);
    returns their event.ids."""
    from sensor.host import Host
    from sensor.schema import Stamper

    stamper, ids, start = Stamper(Host()), [], time.monotonic()
    for i in range(n):
        ev = stamper.stamp({"event": {"dataset": dataset, "action": "exec", "category": ["process"]},
                            "process": {"pid": 1000 + i, "name": "true", "entity_id": f"e{i}",
                                        "args": ["/bin/true", str(i)]}})
        if host_id is not None:
            ev["host"] = dict(ev["host"], id=host_id)
        sink.write(ev)
        ids.append(ev["event"]["id"])
        if rate and i % 100 == 0:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return ids


def stream_messages(url: str, **connect) -> int:
    import asyncio

    import nats

    async def count():
        nc = await nats.connect(url, **connect)
        try:
            return (await nc.jetstream().stream_info("SENSOR")).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def make_tls(directory: Path) -> dict:
    """A CA made here, a server certificate for 127.0.0.1 and a client certificate it signed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name, issuer_name, issuer_key, key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(stem, c, key):
        (directory / f"{stem}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor test CA")])
    ca = cert("sensor test CA", ca_name, ca_key, ca_key, ca=True)
    write("ca", ca, ca_key)
    for stem, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                      ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(stem, cert(stem, ca_name, ca_key, key, san=san), key)
    return {name: str(directory / f"{name}.pem") for name in ("ca", "server", "client")} | {
        "server_key": str(directory / "server-key.pem"), "client_key": str(directory / "client-key.pem")}


# -- fixtures (import them into a test module) ------------------------------------------------

@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def dsn(postgres):
    """A database of its own for each test, in the module's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres.query(f"CREATE DATABASE {name}")
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def nats(tmp_path):
    server = NatsServer(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def collectors(tmp_path):
    """collectors(url, dsn, *flags) -> Collector; all are stopped at teardown."""
    started = []

    def start(url, dsn, *flags):
        c = Collector(tmp_path / f"collect{len(started)}.log", url, dsn, *flags)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)


def query(dsn, sql, *params):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def stored_ids(dsn) -> list[str]:
    return [r[0] for r in query(dsn, "SELECT id FROM events")]
