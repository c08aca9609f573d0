"""The wheel a user installs carries the compiled eBPF objects and the `sensor` command."""
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_carries_bpf_objects_and_console_script(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("sensor-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"sensor/bpf/process.bpf.o", "sensor/bpf/probe.bpf.o"} <= names
        # an ELF eBPF object with its BTF, which CO-RE relocation needs at load time
        obj = z.read("sensor/bpf/process.bpf.o")
        assert obj[:4] == b"\x7fELF" and b".BTF" in obj
        # the ETW definitions, where sensor/windows/providers.py looks in an installed package
        etw = sorted(p.name for p in (ROOT / "etw").glob("*.yaml"))
        assert etw and {f"sensor/data/etw/{n}" for n in etw} <= names, sorted(n for n in names if "etw" in n)
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
        assert "Provides-Extra: windows" in metadata and "pywintrace @ git+" in metadata
        (entry,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "sensor = sensor.cli:main" in z.read(entry).decode()
