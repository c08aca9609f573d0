"""Host resources (psutil) as `host.metrics` events: CPU, memory, swap, disks, network, sensors."""
from __future__ import annotations

import logging
import os
import time

import psutil

from .timersource import TimerSource

log = logging.getLogger("sensor.metrics")


def _asdict(nt) -> dict:
    return {k: v for k, v in nt._asdict().items()} if nt is not None else {}


def _rates(now: dict, before: dict, seconds: float) -> dict:
    """Per-second rates of the counters that grew since the last sample."""
    return {f"{k}_per_s": round((now[k] - before.get(k, now[k])) / seconds, 3) for k in now
            if isinstance(now[k], (int, float))}


class MetricsSource(TimerSource):
    """A timer-driven source: `poll` yields a sample once per interval, nothing in between."""

    name = "host.metrics"

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._next = 0.0
        self._last: dict = {}
        self._last_t = 0.0
        self.gpu_reason = _gpu_reason()
        self._nvml = None if self.gpu_reason else _nvml()

    def start(self):
        psutil.cpu_percent(percpu=True)  # the first call only sets the baseline
        psutil.cpu_times_percent()
        self._next = time.monotonic() + self.interval
        self._last_t = time.monotonic()
        self._last = self._counters()
        return self


    def _counters(self) -> dict:
        return {"disk": {d: _asdict(c) for d, c in (psutil.disk_io_counters(perdisk=True) or {}).items()},
                "net": {n: _asdict(c) for n, c in psutil.net_io_counters(pernic=True).items()},
                "swap": _asdict(psutil.swap_memory())}

    def poll(self) -> list[dict]:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval
        return [self.sample(now)]

    def sample(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        seconds = max(now - self._last_t, 1e-6)
        counters = self._counters()
        times = _asdict(psutil.cpu_times_percent())
        freq = psutil.cpu_freq()
        load = psutil.getloadavg()  # os.getloadavg has no Windows half; psutil emulates it there
        cpu = {"usage": round(psutil.cpu_percent() / 100, 4), **{k: v for k, v in times.items()},
               "cores": psutil.cpu_percent(percpu=True), "count": psutil.cpu_count(),
               "load": {"1m": load[0], "5m": load[1], "15m": load[2]}}
        if freq:
            cpu["frequency_mhz"] = round(freq.current, 1)
        swap = counters["swap"]
        disks = {d: {**c, **_rates(c, self._last["disk"].get(d, {}), seconds)} for d, c in counters["disk"].items()}
        usage = {}
        for part in psutil.disk_partitions(all=False):
            try:
                usage[part.mountpoint] = {**_asdict(psutil.disk_usage(part.mountpoint)), "fstype": part.fstype}
            except OSError:
                continue
        nets = {n: {**c, **_rates(c, self._last["net"].get(n, {}), seconds)} for n, c in counters["net"].items()}
        host = {"cpu": cpu, "memory": _asdict(psutil.virtual_memory()),
                "swap": {**swap, **_rates({"sin": swap.get("sin", 0), "sout": swap.get("sout", 0)},
                                          self._last["swap"], seconds)},
                "disk": {"io": disks, "usage": usage}, "network": {"interfaces": nets}}
        sensors = _sensors()
        if sensors:
            host["sensors"] = sensors
        if self._nvml is not None:
            host["gpu"] = {"available": True, "devices": _gpu_sample(self._nvml)}
        else:
            host["gpu"] = {"available": False, "reason": self.gpu_reason}
        self._last, self._last_t = counters, now
        return {"event": {"kind": "metric", "category": ["host"], "type": ["info"], "action": "sample",
                          "dataset": "host.metrics", "module": "psutil"},
                "host": {"metrics": host}}



def _sensors() -> dict:
    out = {}
    temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    if temps:
        out["temperatures"] = {k: [_asdict(t) for t in v] for k, v in temps.items()}
    fans = getattr(psutil, "sensors_fans", lambda: {})() or {}
    if fans:
        out["fans"] = {k: [_asdict(f) for f in v] for k, v in fans.items()}
    battery = getattr(psutil, "sensors_battery", lambda: None)()
    if battery is not None:
        out["battery"] = {k: (None if v in (psutil.POWER_TIME_UNKNOWN, psutil.POWER_TIME_UNLIMITED) else v)
                          if k == "secsleft" else v for k, v in _asdict(battery).items()}
    return out


def _gpu_reason() -> str:
    """Why there are no GPU figures; empty when NVML (how NVIDIA GPUs are read) can be used."""
    if not os.path.exists("/dev/nvidiactl") and os.name != "nt":
        return "no NVIDIA GPU on this host (/dev/nvidiactl absent)"
    try:
        import pynvml  # noqa: F401  (package nvidia-ml-py)
    except ImportError:
        return "NVIDIA GPU present but the NVML binding is not installed (pip install nvidia-ml-py)"
    return ""


def _nvml():
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.warning("NVML did not start (%s): no GPU figures", exc)
        return None
    return pynvml


def _gpu_sample(nvml) -> list[dict]:
    """Utilisation, memory, temperature and power of each GPU; a field the device does not report
    is left out. Not exercised here: no NVIDIA GPU on our machines."""
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        d: dict = {"index": i}
        for key, read in (("name", lambda: nvml.nvmlDeviceGetName(h)),
                          ("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(h)),
                          ("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h)),
                          ("temperature_c", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                          ("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000)):
            try:
                v = read()
            except nvml.NVMLError:
                continue
            if key == "utilization":
                d["utilization"] = {"gpu_pct": v.gpu, "memory_pct": v.memory}
            elif key == "memory":
                d["memory"] = {"total": v.total, "used": v.used, "free": v.free}
            else:
                d[key] = v.decode() if isinstance(v, bytes) else v
        out.append(d)
    return out
