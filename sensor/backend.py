"""The platform backend, chosen once at import as psutil chooses _pslinux or _pswindows: every
platform package (sensor.linux, sensor.windows) offers the same functions, listed in API."""
from __future__ import annotations

import sys

if sys.platform == "win32":
    from .windows import sources as _platform
else:  # Linux, and the portable psutil/watchdog fallbacks everywhere else
    from .linux import sources as _platform

NAME = "windows" if sys.platform == "win32" else "linux" if sys.platform.startswith("linux") else "other"
# build_sources(cfg, blocked), fallback(source, reason, cfg), service_backend(backend, init_dir,
# bus), login_feed(auth_log), poller()
API = ("build_sources", "fallback", "service_backend", "login_feed", "poller")
build_sources = _platform.build_sources
fallback = _platform.fallback
service_backend = _platform.service_backend
login_feed = _platform.login_feed
poller = _platform.poller
