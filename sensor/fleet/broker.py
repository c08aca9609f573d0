"""The NATS side both ends share: URLs, TLS and credentials, connecting, and the SENSOR stream."""
from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError, SensorError

log = logging.getLogger("sensor.fleet.broker")

STREAM = "SENSOR"
SUBJECTS = "sensor.events.>"
_BAD_TOKEN = re.compile(r"[\s*>.]+")


class BrokerError(SensorError):
    """The NATS cluster cannot be reached or refuses us."""

    hint = "check --nats-url, that nats-server runs with JetStream, and the credentials"


def subject(host_id: str, dataset: str) -> str:
    """sensor.events.<host.id>.<event.dataset>: a host id is one token, a dataset keeps its dots."""
    host = _BAD_TOKEN.sub("_", host_id or "") or "unknown"
    parts = [_BAD_TOKEN.sub("_", p) for p in (dataset or "unknown").split(".")]
    return f"sensor.events.{host}." + ".".join(p or "_" for p in parts)


@dataclass
class BrokerOptions:
    urls: list[str]
    user: str | None = None
    password: str | None = None
    creds: str | None = None  # a .creds file: user JWT + nkey seed (operator mode)
    nkey: str | None = None  # an nkey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    replicas: int = 1
    max_bytes: int = 0  # 0: no limit
    max_age: float = 0.0
    duplicate_window: float = 120.0

    @classmethod
    def parse(cls, spec: str | None, **kw) -> "BrokerOptions":
        """Comma-separated nats:// or tls:// URLs; a bad one is a ConfigError naming it."""
        urls = [u.strip() for u in (spec or "").split(",") if u.strip()]
        if not urls:
            raise ConfigError("--nats-url: no URL given, which the nats sink needs "
                              "(e.g. nats://10.0.0.5:4222,nats://10.0.0.6:4222)")
        for u in urls:
            parts = urlsplit(u)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if parts.scheme not in ("nats", "tls") or not parts.hostname or port == -1:
                raise ConfigError(f"--nats-url {u!r}: expected nats://HOST:PORT or tls://HOST:PORT")
        if bool(kw.get("tls_cert")) != bool(kw.get("tls_key")):
            raise ConfigError("nats TLS: a client certificate needs its key (tls_cert and tls_key together)")
        return cls(urls=urls, **{k: v for k, v in kw.items() if v is not None})

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert or any(u.startswith("tls://") for u in self.urls)):
            return None
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path:
                try:
                    open(path, "rb").close()
                except OSError as exc:  # ssl's own errors do not name the file
                    raise ConfigError(f"nats TLS: cannot read {path}: {exc.strerror}") from None
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as exc:
            raise ConfigError(f"nats TLS: {self.tls_ca}, {self.tls_cert}, {self.tls_key}: not a usable "
                              f"CA, certificate and key ({exc.reason or exc})") from None
        return ctx

    def connect_kwargs(self) -> dict:
        kw: dict = {"servers": self.urls, "tls": self.ssl_context()}
        if self.user:
            kw.update(user=self.user, password=self.password or "")
        if self.creds:
            kw["user_credentials"] = self.creds
        if self.nkey:
            kw["nkeys_seed"] = self.nkey
        return kw

    def stream_config(self):
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        # discard new: a full stream refuses publishes, which then wait in the hosts' outboxes
        # (counted there), instead of silently dropping the oldest unread events
        return StreamConfig(name=STREAM, subjects=[SUBJECTS], storage=StorageType.FILE,
                            num_replicas=self.replicas, max_bytes=self.max_bytes or -1,
                            max_age=self.max_age or None, discard=DiscardPolicy.NEW,
                            duplicate_window=self.duplicate_window)


async def connect(opts: BrokerOptions, name: str, *, timeout: float = 5.0, callbacks=None, **options):
    """A connected nats-py client that reconnects by itself from then on; BrokerError with the
    last reason when no server accepted us within `timeout` seconds. `options` go to nats.connect."""
    import asyncio

    import nats

    reasons: list = []
    up = False

    async def on_error(exc):  # nats-py reports every failed attempt here: keep the reason
        if not up:  # the server's refusal, not the connection drop that follows it
            reasons.append(exc)
            exc = _telling(reasons)
        if callbacks is not None and "error" in callbacks:
            callbacks["error"](exc)

    cb = {k: v for k, v in (callbacks or {}).items() if k in ("disconnected_cb", "reconnected_cb")}
    nc = None
    try:
        # nats-py retries the first connection forever too (max_reconnect_attempts=-1): bound it
        nc = await asyncio.wait_for(nats.connect(name=name, allow_reconnect=True, connect_timeout=2,
                                                 reconnect_time_wait=0.5, max_reconnect_attempts=-1,
                                                 error_cb=on_error, **cb, **options, **opts.connect_kwargs()), timeout)
        up = True
        return nc
    except ConfigError:
        raise
    except Exception as exc:  # nats-py raises its own, OSError, ssl errors: all mean "cannot connect"
        why = describe(_telling(reasons)) if reasons else (
            f"no answer within {timeout:g}s" if isinstance(exc, asyncio.TimeoutError) else describe(exc))
        raise BrokerError(f"cannot connect to {','.join(opts.urls)}: {why}") from None


# what a server says when it turns a client away; the reset or EOF that follows says nothing
_REFUSAL = re.compile(r"authori[sz]ation|authentication|permissions? violation|certificate", re.I)


def _telling(reasons: list) -> BaseException:
    """Of one connection attempt's errors, the last refusal, else the last error."""
    return next((e for e in reversed(reasons) if _REFUSAL.search(str(e))), reasons[-1])


def describe(exc: BaseException) -> str:
    """One line for any nats-py, socket or TLS error."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ == "NoServersError":
        text = "no server answered"
    return text.splitlines()[0]


async def ensure_stream(js, opts: BrokerOptions, *, create: bool = True) -> bool:
    """Creates the SENSOR stream when missing; True when it exists afterwards."""
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(STREAM)
        return True
    except NotFoundError:
        if not create:
            return False
    await js.add_stream(opts.stream_config())
    log.info("nats: created stream %s (%s, %d replicas, file storage)", STREAM, SUBJECTS, opts.replicas)
    return True
