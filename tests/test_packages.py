"""`make package`'s artefacts: the .deb installed for real on this machine and purged, the .rpm
and .msi read back with their own tools (rpm, msiinfo). One build per session, in a temp dir."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from sensor import __version__

# what the package puts on the machine, and what deb-systemd-helper adds for it
INSTALLED = ["/opt/sensor", "/usr/bin/sensor", "/lib/systemd/system/sensor.service", "/etc/sensor", "/var/lib/sensor",
             "/etc/systemd/system/multi-user.target.wants/sensor.service", "/etc/systemd/system/sensor.service",
             "/var/lib/systemd/deb-systemd-helper-enabled/sensor.service.dsh-also",
             "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/sensor.service",
             "/var/lib/systemd/deb-systemd-helper-masked/sensor.service"]
TOOLS = ("dpkg-deb", "rpmbuild", "wixl", "wixl-heat", "msiinfo", "systemd-analyze", "/usr/bin/python3.11")


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, **kw)
    assert not check or r.returncode == 0, f"{' '.join(cmd)}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def deb_installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "sensor"], capture_output=True, text=True)
    return r.returncode == 0 and "not-installed" not in r.stdout


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"`make deps` installs the packaging tools; missing: {', '.join(missing)}")
    out, work = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("pkgwork")
    t = time.monotonic()
    r = sh(sys.executable, ROOT / "packaging/build.py", "--out", out, "--work", work, "--fast", check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\npackages built in {time.monotonic() - t:.0f}s:\n{r.stdout}")
    shutil.rmtree(work, ignore_errors=True)  # hundreds of MiB of staged trees
    found = {"wheel": list(out.glob("sensor-*.whl")), "deb": list(out.glob("sensor_*.deb")),
             "rpm": list(out.glob("sensor-*.rpm")), "msi": list(out.glob("sensor-*.msi"))}
    assert all(len(v) == 1 for v in found.values()), found
    return {k: v[0] for k, v in found.items()}


def test_one_version_everywhere(packages):
    assert packages["wheel"].name.startswith(f"sensor-{__version__}-")
    assert sh("dpkg-deb", "-f", packages["deb"], "Version").stdout.strip() == __version__
    assert sh("rpm", "-qp", "--qf", "%{VERSION}", packages["rpm"]).stdout == __version__
    assert f"ProductVersion\t{__version__}" in sh("msiinfo", "export", packages["msi"], "Property").stdout


@pytest.fixture
def installed_deb(packages):
    """The .deb installed with dpkg; purged afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("installing a .deb needs root")
    present = [p for p in INSTALLED if os.path.lexists(p)] + (["package sensor"] if deb_installed() else [])
    if present:
        pytest.skip(f"this machine already has the sensor installed: {', '.join(present)}")
    try:
        sh("dpkg", "-i", packages["deb"])
        yield packages["deb"]
    finally:
        subprocess.run(["dpkg", "--purge", "sensor"], capture_output=True, stdin=subprocess.DEVNULL)


def test_deb_installs_runs_from_its_own_tree_and_purges_clean(installed_deb, tmp_path):
    # the command is the packaged virtualenv's, on Debian's python, not the build machine's pyenv
    assert os.readlink("/usr/bin/sensor") == "/opt/sensor/bin/sensor"
    assert Path("/opt/sensor/bin/sensor").read_text().startswith("#!/opt/sensor/bin/python\n")
    assert os.path.realpath("/opt/sensor/bin/python") == os.path.realpath("/usr/bin/python3.11")
    bpf = sorted(Path("/opt/sensor/lib/python3.11/site-packages/sensor/bpf").glob("*.bpf.o"))
    assert bpf and {"process.bpf.o", "probe.bpf.o"} <= {p.name for p in bpf}
    assert stat.S_IMODE(os.stat("/var/lib/sensor").st_mode) == 0o700
    assert "/etc/sensor/sensor.yaml" in Path("/var/lib/dpkg/info/sensor.conffiles").read_text().split()
    # enabled, not started
    assert os.readlink("/etc/systemd/system/multi-user.target.wants/sensor.service").endswith("/sensor.service")

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # nothing of this checkout's venv
    r = sh("/opt/sensor/bin/python", "-c", "import sensor, numpy, pyarrow, sigma; print(sensor.__file__)", env=env, cwd="/")
    assert r.stdout.startswith("/opt/sensor/lib/python3.11/site-packages/sensor/")
    r = sh("/usr/bin/sensor", "doctor", env=env, cwd="/", check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    # the installed sensor traces a real exec with its eBPF objects, into a temp data dir
    data, log = tmp_path / "data", tmp_path / "run.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen(["/usr/bin/sensor", "run", "--duration", "3", "--data-dir", str(data), "--console", "off",
                                 "--no-metrics-enabled"], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd="/")
        try:
            wait_for(lambda: b"Ctrl-C stops" in log.read_bytes() or proc.poll() is not None, timeout=60,
                     what="the installed sensor to attach")
            sh("/bin/true", "sensor-package-marker")
            assert proc.wait(60) == 0, log.read_text()
        finally:
            proc.kill()
            proc.wait()
    r = sh("/usr/bin/sensor", "events", "--data-dir", str(data), "--where", "event.action=exec", env=env, cwd="/")
    assert "sensor-package-marker" in r.stdout, log.read_text()

    unit = "/lib/systemd/system/sensor.service"
    r = sh("systemd-analyze", "verify", unit, check=False)
    assert r.returncode == 0 and "sensor.service" not in r.stderr, r.stderr

    # an upgrade (here: the same package again) keeps an edited conffile and the data
    Path("/etc/sensor/sensor.yaml").write_text(Path("/etc/sensor/sensor.yaml").read_text() + "log_level: warning\n")
    Path("/var/lib/sensor/keep").write_text("events")
    sh("dpkg", "-i", installed_deb)
    assert "log_level: warning" in Path("/etc/sensor/sensor.yaml").read_text()

    sh("dpkg", "-r", "sensor")  # remove: program gone, config and data stay
    assert not os.path.lexists("/opt/sensor") and not os.path.lexists("/usr/bin/sensor")
    assert Path("/var/lib/sensor/keep").exists() and Path("/etc/sensor/sensor.yaml").exists()
    sh("dpkg", "--purge", "sensor")
    left = [p for p in INSTALLED if os.path.lexists(p)]
    assert not left and not deb_installed(), f"left after purge: {left}"


def test_rpm_files_dependencies_and_scripts(packages):
    rpm = packages["rpm"]
    files = set(sh("rpm", "-qlp", rpm).stdout.split())
    assert {"/opt/sensor/bin/sensor", "/usr/bin/sensor", "/usr/lib/systemd/system/sensor.service",
            "/etc/sensor/sensor.yaml", "/var/lib/sensor",
            "/opt/sensor/lib/python3.11/site-packages/sensor/bpf/process.bpf.o"} <= files
    info = sh("rpm", "-qip", rpm).stdout
    assert re.search(r"^Name\s*: sensor$", info, re.M) and re.search(rf"^Version\s*: {re.escape(__version__)}$", info, re.M)
    assert sh("rpm", "-qp", "--configfiles", rpm).stdout.split() == ["/etc/sensor/sensor.yaml"]
    requires = sh("rpm", "-qp", "--requires", rpm).stdout.splitlines()
    assert "/usr/bin/python3.11" in requires and "libbpf.so.1()(64bit)" in requires
    assert not [r for r in requires if "numpy" in r or "pyarrow" in r]  # bundled, not required
    modes = dict(line.rsplit(" ", 1) for line in
                 sh("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEMODES:perms}\n]", rpm).stdout.splitlines())
    assert modes["/var/lib/sensor"] == "drwx------"
    scripts = sh("rpm", "-qp", "--scripts", rpm).stdout
    post = scripts.split("postinstall scriptlet")[1].split("scriptlet")[0]
    commands = [line for line in post.splitlines() if not line.lstrip().startswith("#")]
    assert "systemctl --no-reload enable sensor.service" in post and not [c for c in commands if " start" in c]
    preun = scripts.split("preuninstall scriptlet")[1].split("scriptlet")[0]
    assert "disable sensor.service" in preun and "stop sensor.service" in preun


def msi_table(msi: Path, table: str) -> list[list[str]]:
    # export: column names, types, the table's key line, then one tab-separated row per line
    return [line.split("\t") for line in sh("msiinfo", "export", msi, table).stdout.splitlines()[3:]]


def test_msi_tables(packages):
    msi = packages["msi"]
    tables = set(sh("msiinfo", "tables", msi).stdout.split())
    assert {"File", "Component", "ServiceInstall", "ServiceControl", "Upgrade", "AppSearch", "RegLocator",
            "LaunchCondition", "Registry"} <= tables
    props = dict(row[:2] for row in msi_table(msi, "Property"))
    wxs = (ROOT / "packaging/msi/sensor.wxs").read_text()
    upgrade = re.search(r'UpgradeCode="([0-9a-fA-F-]+)"', wxs).group(1).upper()
    assert props["UpgradeCode"].strip("{}").upper() == upgrade
    assert upgrade in {row[0].strip("{}").upper() for row in msi_table(msi, "Upgrade")}

    files = {row[2].split("|")[-1]: row[1] for row in msi_table(msi, "File")}  # file name -> component
    assert {"pythonservice.exe", "winservice.py", "sensor.yaml", "process.bpf.o", "win32service.pyd"} <= set(files)
    assert any(re.fullmatch(r"_multiarray_umath\.cp311-win_amd64\.pyd", f) for f in files)  # Windows builds
    assert not any(f.endswith(".so") for f in files) and "jeepney" not in " ".join(files)  # nothing of Linux's

    [svc] = msi_table(msi, "ServiceInstall")
    cols = dict(zip(["id", "name", "display", "type", "start", "error", "group", "deps", "account", "pw", "args",
                     "component", "description"], svc))
    assert cols["name"] == "sensor" and cols["start"] == "2" and cols["type"] == "16"  # auto start, own process
    keypaths = {row[0]: row[5] for row in msi_table(msi, "Component")}
    file_ids = {row[0]: row[2].split("|")[-1] for row in msi_table(msi, "File")}
    assert file_ids[keypaths[cols["component"]]] == "pythonservice.exe"  # the service's image
    registry = msi_table(msi, "Registry")
    assert any(r[2].endswith(r"Services\sensor\PythonClass") and r[4].endswith(r"sensor\winservice.SensorService")
               for r in registry)
    [search] = msi_table(msi, "RegLocator")
    assert search[2] == r"SOFTWARE\Python\PythonCore\3.11\InstallPath"
    assert "Installed OR PYTHONDIR" in [row[0] for row in msi_table(msi, "LaunchCondition")]
