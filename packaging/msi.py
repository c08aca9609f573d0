"""The .msi: the sensor and the Windows wheels of its dependencies, unpacked at build time for
CPython 3.11 on win_amd64, plus pywin32's service host, packed with wixl (msitools).

pip evaluates environment markers for the machine it runs on, not for --platform, so the
Windows requirement set is worked out here: Requires-Dist read from each wheel and evaluated for
Windows, until nothing is missing (pywin32 comes in, jeepney, Linux's D-Bus, stays out)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

PACKAGING = Path(__file__).resolve().parent
TARGET = ["--platform", "win_amd64", "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:"]
WINDOWS = {**default_environment(), "sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
           "platform_machine": "AMD64", "python_version": "3.11", "python_full_version": "3.11.9",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *map(str, args)], check=True)


def _requires(wheel: Path, extras=("",)) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({**WINDOWS, "extra": e}) for e in extras)]


def _spec(r: Requirement) -> str:
    """Without its marker, which pip would evaluate for this machine and drop."""
    return r.name + (f"[{','.join(sorted(r.extras))}]" if r.extras else "") + str(r.specifier)


def _name(wheel: Path) -> str:
    return canonicalize_name(wheel.name.split("-")[0])


def vendor_wheels(sensor_wheel: Path, wheels: Path, find_links: Path | None = None) -> list[Path]:
    """Downloads win_amd64 wheels until every Windows requirement has one (`find_links`: a folder
    of pure-Python wheels built here); fails naming a dependency that has none (no source builds
    for another platform)."""
    wheels.mkdir(parents=True, exist_ok=True)
    reqs = _requires(sensor_wheel, ("", "windows"))  # the sensor's `windows` extra: pywin32 for the service
    for r in reqs:
        if r.url:  # a pinned git commit, say: no wheel to vendor from PyPI
            print(f"msi: {r.name} is not vendored (from {r.url}); install it into that Python by hand", file=sys.stderr)
    wanted = {canonicalize_name(r.name): _spec(r) for r in reqs if not r.url}
    for _ in range(20):  # each round adds what the last one's wheels require
        have = {_name(w): w for w in wheels.glob("*.whl")}
        missing = [spec for name, spec in wanted.items() if name not in have]
        if not missing:
            return [have[name] for name in sorted(wanted)]
        try:
            _pip("download", *TARGET, *(["--find-links", find_links] if find_links else []), "-d", wheels, *missing)
        except subprocess.CalledProcessError:
            raise SystemExit(f"msi: no win_amd64 wheel for one of: {', '.join(missing)}") from None
        have = {_name(w): w for w in wheels.glob("*.whl")}
        for name in list(wanted):  # only what Windows needs: pip also fetched what Linux would
            if name in have:
                wanted.update({canonicalize_name(r.name): _spec(r) for r in _requires(have[name])})
    raise SystemExit(f"msi: dependencies still missing after 20 rounds: {', '.join(missing)}")


def build_msi(sensor_wheel: Path, work: Path, out: Path, ver: str, pure: Path | None = None) -> Path:
    deps = vendor_wheels(sensor_wheel, work / "wheels-win", pure)  # kept: a cache for the next build
    stage = work / "msi"
    shutil.rmtree(stage, ignore_errors=True)
    lib, bin_ = stage / "lib", stage / "bin"
    _pip("install", *TARGET, "--no-index", "--no-deps", "--no-compile", "--target", lib, sensor_wheel, *deps)
    shutil.rmtree(lib / "bin", ignore_errors=True)  # POSIX wrappers of console scripts
    bin_.mkdir()
    shutil.copy2(lib / "win32/pythonservice.exe", bin_)
    (pywintypes,) = (lib / "pywin32_system32").glob("pywintypes3*.dll")
    shutil.copy2(pywintypes, bin_)
    files = sorted(str(p.relative_to(stage)) for p in lib.rglob("*") if p.is_file())
    fragment = subprocess.run(["wixl-heat", "--prefix", "lib/", "--directory-ref", "LIBDIR", "--component-group",
                               "CG.lib", "--var", "var.LibDir", "--win64"], input="\n".join(files) + "\n",
                              capture_output=True, text=True, check=True).stdout
    (stage / "lib.wxs").write_text(fragment)
    msi = out / f"sensor-{ver}-x64.msi"
    shutil.copy2(PACKAGING / "msi/sensor.yaml", stage)
    # wixl resolves File sources relative to where it runs, and only relative ones
    defines = {"Version": ver, "LibDir": "lib", "BinDir": "bin", "PyWinTypes": pywintypes.name, "Win64": "yes",
               "ConfigFile": "sensor.yaml"}
    subprocess.run(["wixl", "-a", "x64", *[a for k, v in defines.items() for a in ("-D", f"{k}={v}")], "-o", str(msi),
                    str(PACKAGING / "msi/sensor.wxs"), "lib.wxs"], check=True, cwd=stage)
    return msi
