"""`make package`: the wheel, a .deb, an .rpm and an .msi of one version, into dist/.

    python packaging/build.py [--out dist] [--work build/package] [--formats wheel,deb,rpm,msi]

The Linux packages carry /opt/sensor, a virtualenv on the system's Python 3.11 with every
dependency installed from wheels now, so nothing is fetched at install time; the .msi carries the
sensor and its dependencies' Windows wheels, unpacked, for an existing Python 3.11 (msi.py).
The version is sensor/__init__.py's __version__, as the wheel's (pyproject reads it there)."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
# the interpreter the packaged virtualenv runs on: Debian's, not the build machine's own
# (a virtualenv links to the python that made it)
SYSTEM_PYTHON = "/usr/bin/python3.11"
PREFIX = "/opt/sensor"
PURE_SDISTS = ("nkeys>=0.2",)  # dependencies with no wheel on PyPI, pure Python (pyproject.toml)


def version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (ROOT / "sensor/__init__.py").read_text(), re.M).group(1)


def run(*cmd, **kw):
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_wheel(out: Path) -> Path:
    for old in out.glob("sensor-*.whl"):
        old.unlink()
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", ROOT, "-w", out, cwd=out)
    (wheel,) = out.glob("sensor-*.whl")
    return wheel


def pure_wheels(work: Path) -> Path:
    """work/pure-wheels: wheels of the pure-Python dependencies published only as source (nkeys),
    for every platform's install (packaging them compiles nothing)."""
    local = work / "pure-wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", local,
        *PURE_SDISTS)
    return local


def stage_linux(wheel: Path, work: Path) -> Path:
    """work/linux-root: /opt/sensor (the virtualenv), /usr/bin/sensor, the config and the docs."""
    root = work / "linux-root"
    shutil.rmtree(root, ignore_errors=True)
    venv = root / PREFIX.lstrip("/")
    run(SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv)
    # binary wheels only: a package build never compiles a dependency from source
    run(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "-q", "--disable-pip-version-check",
        "--only-binary=:all:", "--find-links", pure_wheels(work), "--no-compile", "--no-warn-script-location", wheel)
    site = next(venv.glob("lib/python3*/site-packages"))
    for junk in site.glob("*.dist-info/direct_url.json"):
        junk.unlink()  # names the build directory's wheel
    for junk in ("numpy/_core/tests", "numpy/lib/tests", "numpy/typing/tests", "pyarrow/tests", "pyarrow/include"):
        shutil.rmtree(site / junk, ignore_errors=True)  # test suites and C headers: 38 MiB nothing imports
    for script in venv.glob("bin/activate*"):
        script.unlink()  # nobody activates a service's environment
    _relocate(root, venv)
    # bytecode now, recorded under its final path: at run time /opt is read-only to the service
    run(venv / "bin/python", "-m", "compileall", "-q", "-j0", "-s", root, "-p", "/", venv / "lib")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/sensor").symlink_to(f"{PREFIX}/bin/sensor")
    _install(PACKAGING / "sensor.yaml", root / "etc/sensor/sensor.yaml", 0o644)
    _install(ROOT / "docs/packages.md", root / "usr/share/doc/sensor/packages.md", 0o644)
    return root


def _relocate(root: Path, venv: Path):
    """Script shebangs and pyvenv.cfg name the staging directory: make them name /opt/sensor."""
    staged = str(root).encode()
    for f in [*venv.glob("bin/*"), venv / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            if staged in data:
                f.write_bytes(data.replace(staged, b""))


def _install(src: Path, dst: Path, mode: int):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def _size_kib(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*")) // 1024 + 1


def build_deb(stage: Path, work: Path, out: Path, ver: str, fast: bool = False) -> Path:
    root = work / "deb-root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(stage, root, symlinks=True, copy_function=os.link)
    _install(PACKAGING / "systemd/sensor.service", root / "lib/systemd/system/sensor.service", 0o644)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    debian = root / "DEBIAN"
    debian.mkdir()
    control = (PACKAGING / "deb/control.in").read_text()
    for key, value in {"VERSION": ver, "ARCH": arch, "SIZE": str(_size_kib(root))}.items():
        control = control.replace(f"@{key}@", value)
    (debian / "control").write_text(control)
    _install(PACKAGING / "deb/conffiles", debian / "conffiles", 0o644)
    for script in ("postinst", "prerm", "postrm"):
        _install(PACKAGING / "deb" / script, debian / script, 0o755)
    deb = out / f"sensor_{ver}_{arch}.deb"
    # xz -6 as debhelper does (68 MiB; minutes on two cores); --fast: zstd -3 (96 MiB, seconds)
    level = ["-Zzstd", "-z3"] if fast else ["-Zxz", "-z6"]
    run("dpkg-deb", "--root-owner-group", *level, "--threads-max=0", "--build", root, deb, stdout=subprocess.DEVNULL)
    return deb


def build_rpm(stage: Path, work: Path, out: Path, ver: str, fast: bool = False) -> Path:
    top = work / "rpm"
    shutil.rmtree(top, ignore_errors=True)
    arch = os.uname().machine
    defines = {"_topdir": top, "_rpmdir": out, "stage": stage, "version": ver,
               "stage_unit": PACKAGING / "systemd/sensor.service",
               "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
               # rpm >= 4.14 reads zstd; T0: all cores
               "_binary_payload": "w3T0.zstdio" if fast else "w19T0.zstdio"}
    args = [a for k, v in defines.items() for a in ("--define", f"{k} {v}")]
    run("rpmbuild", "-bb", "--quiet", "--target", arch, *args, PACKAGING / "rpm/sensor.spec",
        stdout=subprocess.DEVNULL)
    (rpm,) = out.glob(f"sensor-{ver}-1.{arch}.rpm")
    return rpm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build/package")
    ap.add_argument("--formats", default="wheel,deb,rpm,msi")
    ap.add_argument("--fast", action="store_true", help="light compression (tests): larger, built in seconds")
    args = ap.parse_args(argv)
    formats = set(args.formats.split(","))
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ver = version()
    timings = {}

    def step(name, fn, *a):
        t = time.monotonic()
        result = fn(*a)
        timings[name] = time.monotonic() - t
        if isinstance(result, Path) and result.is_file():
            print(f"{name:>6}: {result} ({result.stat().st_size / 2**20:.1f} MiB, {timings[name]:.1f}s)")
        return result

    wheel = step("wheel", build_wheel, out)
    if formats & {"deb", "rpm"}:
        stage = step("stage", stage_linux, wheel, work)
        if "deb" in formats:
            step("deb", build_deb, stage, work, out, ver, args.fast)
        if "rpm" in formats:
            step("rpm", build_rpm, stage, work, out, ver, args.fast)
    if "msi" in formats:
        from msi import build_msi

        step("msi", build_msi, wheel, work, out, ver, pure_wheels(work))
    print(f"packages of sensor {ver} in {out} after {sum(timings.values()):.0f}s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(PACKAGING))
    sys.exit(main())
