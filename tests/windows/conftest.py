"""Live Windows tests (marker windows_live): they start real ETW sessions and Event Log queries,
so they run on a Windows runner (.github/workflows/windows.yml) and skip anywhere else."""
from __future__ import annotations

import sys

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "windows_live: needs a real Windows host, elevated (CI: windows.yml)")


def pytest_collection_modifyitems(config, items):
    if sys.platform == "win32":  # noqa: the one place tests ask: these need a live Windows kernel
        return
    skip = pytest.mark.skip(reason="live ETW/Event Log test: needs Windows (runs in .github/workflows/windows.yml)")
    for item in items:
        if "windows_live" in item.keywords:
            item.add_marker(skip)
