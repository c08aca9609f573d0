"""Configuration: the embedded defaults, the YAML file, and a command-line flag per option."""
from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import yaml

from .errors import ConfigError

DEFAULT_PATH = Path("/etc/sensor/sensor.yaml")

# option -> (type, default, help). Types: int, float, bool, str, "bytes" (int or "64MiB").
OPTIONS: dict[str, tuple] = {
    "data_dir": (str, "/var/lib/sensor", "where events and state are stored"),
    "duration": (float, None, "stop after this many seconds (default: run until SIGTERM/SIGINT)"),
    "health_interval": (float, 10.0, "seconds between sensor.health events"),
    "poll_interval": (float, 0.1, "longest wait for kernel events before reading anyway"),
    "batch_interval": (float, 0.05, "under load (over 1,500 records/s), read the kernel buffers at most this often (seconds): fewer wakeups, this much more latency at most"),
    "priority_boost": (int, 4, "at start, raise the sensor's scheduling priority by this much (Linux: nice -N; Windows: above normal), as auditd's priority_boost does: under load it is preempted less, costs less per event and keeps up; 0 leaves it"),
    "console": (str, "auto", "live summary on the terminal: auto (when a TTY), on, off"),
    "log_level": (str, "info", "debug, info, warning or error"),
    "label": (str, None, "dataset label of this recording, on every stored event as labels.run: normal or attack:NAME (see `sensor label`, `sensor dataset export --from-store`)"),
    "model": (str, None, "a `sensor model train` file: trace the syscalls of every process that execs from now on and raise an alert when one scores over the model's threshold (docs/ml.md)"),
    "model.interval": (float, 10.0, "model: also score running processes this often (seconds)"),
    "model.max_calls": (int, 200000, "model: a process's calls kept before they are scored as one segment and dropped"),
    "model.ring_buffer_bytes": ("bytes", 32 << 20, "model: the syscall ring buffer (power of two)"),
    "store.segment_bytes": ("bytes", 64 << 20, "rotate a segment after this many bytes"),
    "store.segment_seconds": (float, 3600.0, "rotate a segment after this many seconds"),
    "store.retention_bytes": ("bytes", 1 << 30, "delete the oldest segments beyond this total"),
    "store.flush_interval": (float, 1.0, "seconds between flushes of the open segment"),
    "sink": (str, "store", "where events go besides: store (always), csv (one CSV per collector in DATA_DIR/csv, the original layout), nats (the fleet's JetStream, see nats.url)"),
    "csv.segment_bytes": ("bytes", 16 << 20, "rotate a CSV (into NAME-TIME.csv.zst) after this many bytes"),
    "csv.segment_seconds": (float, 3600.0, "rotate a CSV after this many seconds"),
    "nats.url": (str, None, "sink nats: comma-separated nats:// or tls:// URLs of the JetStream cluster"),
    "nats.user": (str, None, "sink nats: this host's NATS user"),
    "nats.password": (str, None, "sink nats: its password"),
    "nats.creds": (str, None, "sink nats: a .creds file (user JWT and nkey seed) for this host"),
    "nats.nkey": (str, None, "sink nats: an nkey seed file for this host"),
    "nats.tls_ca": (str, None, "sink nats: CA file that signed the servers' certificates"),
    "nats.tls_cert": (str, None, "sink nats: this host's client certificate"),
    "nats.tls_key": (str, None, "sink nats: its key"),
    "nats.replicas": (int, 1, "sink nats: replicas of the SENSOR stream when this host creates it"),
    "nats.max_bytes": ("bytes", 0, "sink nats: size limit of the SENSOR stream when created (0: none; when full, hosts keep events in their outbox)"),
    "nats.max_age": (float, 0.0, "sink nats: seconds the SENSOR stream keeps events when created (0: until its size limit)"),
    "nats.duplicate_window": (float, 120.0, "sink nats: seconds within which the stream drops a resent event.id"),
    "outbox.max_bytes": ("bytes", 256 << 20, "sink nats: events waiting for the broker in DATA_DIR/outbox, at most (beyond: counted in sensor.health, not kept)"),
    "outbox.segment_bytes": ("bytes", 8 << 20, "sink nats: outbox segment size"),
    "upload": (str, None, "upload every closed, compressed segment (events, and CSV with sink csv) from a thread: azure (Blob Storage, see azure.*)"),
    "azure.connection_string": (str, None, "upload azure: the storage account's connection string (default: $AZURE_STORAGE_CONNECTION_STRING)"),
    "azure.container": (str, "sensor", "upload azure: the container (created when missing); blobs are <host.id>/YYYY/MM/DD/<file>"),
    "azure.retry_max": (float, 30.0, "upload azure: longest wait (seconds) between retries of a failed upload"),
    "notifiers": (str, None, "YAML file of alert notifiers (webhook, telegram, email)"),
    "response_policy": (str, None, "YAML response policies (kill, kill-tree, block-exec, none)"),
    "rules": (str, "builtin", "Sigma rules: builtin, none, or comma-separated files/dirs (builtin may be one)"),
    "rules_skip_invalid": (bool, False, "start even when a rule file is malformed, invalid Sigma or names an unknown field: such rules are logged, counted in sensor.health and skipped (default: refuse to start)"),
    "metrics.enabled": (bool, True, "sample host resources (CPU, memory, disks, network, sensors)"),
    "metrics.interval": (float, 1.0, "seconds between host.metrics samples"),
    "files.enabled": (bool, True, "report file changes under the watched paths"),
    "files.backend": (str, "auto", "ebpf (in the kernel, with the acting process), watchdog (inotify and friends, no actor), or auto"),
    "files.paths": (str, "/home,/root,/usr/bin,/usr/local/bin,/tmp,/var/tmp,/mnt,/etc,/usr/lib/systemd,/dev/shm",
                    "comma-separated path prefixes to watch (a trailing * matches name prefixes: /etc/cron*)"),
    "files.exclude": (str, "/root/.cache,/var/tmp/systemd-private-", "comma-separated prefixes never reported (the data dir always is)"),
    "files.hash": (bool, True, "sha256 of executables that file events show created, written or made executable"),
    "files.hash_max_bytes": ("bytes", 32 << 20, "larger executables are not hashed"),
    "files.hash_per_second": (float, 20.0, "at most this many hashes a second (the rest are counted, not hashed)"),
    "files.write_interval": (float, 1.0, "ebpf: at most one write event per file and process per this many seconds"),
    "files.ring_buffer_bytes": ("bytes", 4 << 20, "ebpf: kernel ring buffer size (power of two)"),
    "network.enabled": (bool, True, "report TCP connections, UDP flows, DNS, bind and listen (eBPF)"),
    "network.flow_interval": (float, 60.0, "seconds between two reports of one UDP flow (DNS: every message)"),
    "network.ring_buffer_bytes": ("bytes", 4 << 20, "kernel ring buffer size (power of two)"),
    "security.enabled": (bool, True, "report ptrace, uid/gid/capability changes, module loads, bpf(), mounts, memfd_create, cross-user signals, unshare/setns (eBPF)"),
    "packets.enabled": (bool, False, "packet metadata (addresses, ports, protocols, DNS, HTTP host, TLS SNI) from an AF_PACKET socket"),
    "packets.interface": (str, None, "only this interface (default: all)"),
    "packets.per_second": (float, 1000.0, "at most this many packets a second are dissected (the rest are counted)"),
    "process.enabled": (bool, True, "trace exec, fork and exit in the kernel"),
    "process.backend": (str, "auto", "ebpf, psutil (polling: no root or BTF needed, may miss short-lived processes), or auto"),
    "process.poll_interval": (float, 1.0, "seconds between scans of the psutil backend"),
    "process.ring_buffer_bytes": ("bytes", 4 << 20, "kernel ring buffer size (power of two)"),
    "process.threads": (bool, False, "also report thread creation"),
    "process.wakeup_bytes": ("bytes", None, "wake the reader only when this much waits (default: whenever it has caught up)"),
    "inventory.processes": (bool, True, "report running processes at start, then their significant changes"),
    "inventory.interval": (float, 5.0, "seconds between inventory scans (processes, services, sessions)"),
    "inventory.io_threshold": ("bytes", 100 << 20, "report a process's I/O once it grew this much since last reported"),
    "inventory.memory_threshold": ("bytes", 100 << 20, "report a process's RSS once it grew this much (or by half) since last reported"),
    "services.enabled": (bool, True, "report services at start, then their changes"),
    "services.backend": (str, "auto", "systemd (D-Bus), sysv (init scripts), or auto (systemd when it is PID 1)"),
    "services.init_dir": (str, "/etc/init.d", "sysv: the init scripts' directory"),
    "logins.enabled": (bool, True, "report sessions, logins, failed logins and sudo use"),
    "logins.auth_log": (str, "/var/log/auth.log", "syslog auth file followed where journald does not run"),
    "logins.wtmp": (str, "/var/log/wtmp", "session log followed for logins and logouts (utmp is compared between looks where it is absent)"),
}
CHOICES = {"console": ("auto", "on", "off"), "log_level": ("debug", "info", "warning", "error"),
           "process.backend": ("auto", "ebpf", "psutil"), "files.backend": ("auto", "ebpf", "watchdog")}

CHOICES["services.backend"] = ("auto", "systemd", "sysv")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def parse_bytes(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 4096, 64MiB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _coerce(name: str, value):
    kind = OPTIONS[name][0]
    if value is None:
        return None
    if kind == "bytes":
        out = parse_bytes(value)
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        out = value
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        out = kind(value)
    else:
        out = str(value)
    if name in CHOICES and out not in CHOICES[name]:
        raise ValueError(f"expected one of {', '.join(CHOICES[name])}, got {out!r}")
    if name == "label":
        from .learn.labels import LABEL

        if not LABEL.fullmatch(out):
            raise ValueError(f"expected normal or attack:NAME (NAME: letters, digits, . _ -), got {out!r}")
    if kind in ("bytes", int, float) and out < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return out


class Config(dict):
    """Flat {dotted option: value}; `cfg.section("store")` gives {"segment_bytes": ...}."""

    def section(self, prefix: str) -> dict:
        return {k[len(prefix) + 1:]: v for k, v in self.items() if k.startswith(prefix + ".")}


def defaults() -> Config:
    return Config({name: copy.copy(spec[1]) for name, spec in OPTIONS.items()})


def load_file(path: str | Path) -> dict:
    """Options from a YAML file; errors name the file, line and reason."""
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of options")
    out: dict = {}
    _walk(path, root, "", out)
    return out


def _walk(path: Path, node: yaml.MappingNode, prefix: str, out: dict):
    loader = yaml.SafeLoader("")
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        name = prefix + str(key_node.value)
        if isinstance(value_node, yaml.MappingNode) and any(o.startswith(name + ".") for o in OPTIONS):
            _walk(path, value_node, name + ".", out)
            continue
        if name not in OPTIONS:
            raise ConfigError(f"{path}:{line}: unknown option {name!r}",
                              hint="`sensor run --help` lists every option")
        try:
            out[name] = _coerce(name, loader.construct_object(value_node, deep=True))
        except ValueError as exc:
            raise ConfigError(f"{path}:{line}: {name}: {exc}") from None


def add_flags(parser: argparse.ArgumentParser):
    """One flag per option: store.segment_bytes -> --store-segment-bytes."""
    group = parser.add_argument_group("options (also settable in the config file)")
    for name, (kind, default, help_text) in OPTIONS.items():
        flag = "--" + name.replace(".", "-").replace("_", "-")
        dest = "opt:" + name
        shown = f"{help_text} (default: {default})"
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=None, help=shown)
        else:
            group.add_argument(flag, dest=dest, default=None, metavar=name.split(".")[-1].upper(),
                               help=shown)


def resolve(args: argparse.Namespace) -> Config:
    """Defaults, then the config file (--config, or /etc/sensor/sensor.yaml when present), then flags."""
    cfg = defaults()
    path = getattr(args, "config", None)
    if path:
        cfg.update(load_file(path))
    elif DEFAULT_PATH.exists():
        cfg.update(load_file(DEFAULT_PATH))
    for key, value in vars(args).items():
        if key.startswith("opt:") and value is not None:
            name = key[4:]
            if OPTIONS[name][0] in (int, float) and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"--{name.replace('.', '-').replace('_', '-')}: expected a number, got {value!r}") from None
            try:
                cfg[name] = _coerce(name, value)
            except ValueError as exc:
                raise ConfigError(f"--{name.replace('.', '-').replace('_', '-')}: {exc}") from None
    return cfg
