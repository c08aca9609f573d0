"""The platform backend, chosen once at import as psutil chooses _pslinux or _pswindows: every
platform package (sensor.linux, sensor.windows) offers the same functions, listed in API, a
`system` module (clocks, host ids, process start times, user names, file locks) and a `kill`
module (the responder's safe kill)."""
from __future__ import annotations

import os
import sys

# SENSOR_PLATFORM=windows|linux forces a backend: tests build the Windows sensor on Linux with it
NAME = os.environ.get("SENSOR_PLATFORM") or (
    "windows" if sys.platform == "win32" else "linux" if sys.platform.startswith("linux") else "other")
if NAME not in ("linux", "windows", "other"):
    raise ImportError(f"SENSOR_PLATFORM={NAME!r}: use linux or windows (or leave it unset)")

if NAME == "windows":
    from .windows import kill, sources as _platform, system
else:  # Linux, and the portable psutil/watchdog fallbacks everywhere else
    from .linux import kill, sources as _platform, system

# build_sources(cfg, blocked), fallback(source, reason, cfg), service_backend(backend, init_dir,
# bus), login_feed(auth_log), poller(), rule_set()
API = ("build_sources", "fallback", "service_backend", "login_feed", "poller", "rule_set")
# what sensor.linux.system and sensor.windows.system both define (tests/test_backend.py checks it)
SYSTEM_API = ("NS_PER_TICK", "RELOAD_SIGNAL", "boot_ns", "record_ns", "unix_offset_ns", "start_ticks", "boot_id", "machine_id",
              "os_fields", "user_name", "group_name", "seed_attrs", "seed_ids", "process_ids", "UNKNOWN_IDS", "lock", "OPEN_FLAGS", "fsync_dir")
KILL_API = ("BLOCK_IN_KERNEL", "protected_pids", "is_kernel_thread", "descendants", "kill")
build_sources = _platform.build_sources
fallback = _platform.fallback
service_backend = _platform.service_backend
login_feed = _platform.login_feed
poller = _platform.poller
rule_set = _platform.rule_set
