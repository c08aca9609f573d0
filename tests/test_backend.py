"""The platform layer: one interface over sensor.linux and sensor.windows, chosen once, and every
source declaring its optional capabilities instead of being probed for them."""
from __future__ import annotations

import inspect

from sensor import backend, config
from sensor.linux import sources as linux
from sensor.source import CAPABILITIES, Source
from sensor.windows import sources as windows
from conftest import ROOT


def test_both_platforms_offer_the_same_functions():
    for name in backend.API:
        lin, win = getattr(linux, name), getattr(windows, name)
        assert list(inspect.signature(lin).parameters) == list(inspect.signature(win).parameters), name
        assert getattr(backend, name) is lin  # this host is Linux: chosen once, at import
    assert backend.NAME == "linux"


def test_the_platform_is_decided_in_one_module():
    """No `sys.platform` tests spread over the package: the backend chooses, the rest asks it."""
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "sensor").rglob("*.py")
             if "sys.platform" in p.read_text()]
    assert found == ["sensor/backend.py"]


def test_sources_declare_capabilities_rather_than_being_probed():
    pipeline = (ROOT / "sensor" / "pipeline.py").read_text()
    assert "hasattr(" not in pipeline and "getattr(s" not in pipeline
    cfg = config.defaults()
    cfg["data_dir"] = "/nonexistent-sensor-data"
    built = linux.build_sources(cfg, blocked=[]) + windows.build_sources(cfg)
    names = {type(s).__name__ for s in built}
    assert {"ProcessSource", "FileSource", "NetSource", "SecuritySource", "BlockSource", "EtwSource",
            "EventLogSource"} <= names, names
    for s in built:
        assert isinstance(s, Source), type(s).__name__
        assert s.capabilities <= CAPABILITIES, (type(s).__name__, s.capabilities)
        for cap in s.capabilities:  # a declared capability is a method of that name
            assert callable(getattr(s, cap)), (type(s).__name__, cap)
    process = next(s for s in built if type(s).__name__ == "ProcessSource")
    assert process.capabilities == CAPABILITIES
    assert all(not s.capabilities for s in built if s is not process)


def test_windows_sessions_and_key_directories():
    cfg = config.defaults()
    cfg["data_dir"] = r"C:\ProgramData\sensor"
    built = windows.build_sources(cfg)
    sessions = {s.name: s.session for s in built if type(s).__name__ == "EtwSource"}
    assert sessions == {"process": "sensor-kernel-process", "process.command_line": "NT Kernel Logger",
                        "file": "sensor-kernel-file", "network": "sensor-kernel-network",
                        "network.dns": "sensor-dns-client", "registry": "sensor-kernel-registry"}
    # the kernel logger's command lines reach Kernel-Process starts through one shared mapper
    assert len({id(s.mapper) for s in built if hasattr(s, "mapper")}) == 1
    cfg["files.backend"] = "watchdog"
    files = next(s for s in windows.build_sources(cfg) if s.name == "file")
    for path in (r"C:\Users", r"C:\Windows\Temp", r"C:\Windows\Tasks", r"C:\Windows\System32",
                 r"C:\Windows\SysWOW64", r"C:\Windows\WinSxS"):
        assert path in files.paths
    assert any(p.endswith(r"Start Menu\Programs") for p in files.paths)
