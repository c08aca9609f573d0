"""Builds the eBPF objects into the package before setuptools copies package data, and copies
the ETW definitions (etw/*.yaml) in as sensor/data/etw.

The wheel carries sensor/bpf/*.bpf.o, so installed sensors need only libbpf1 at run time,
never clang or kernel headers.
"""
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self):
        root = Path(__file__).parent
        if (root / "bpf").is_dir() and sys.platform.startswith("linux"):  # eBPF objects: Linux's only
            subprocess.run(["make", "-C", str(root), "bpf"], check=True)
        super().run()
        target = Path(self.build_lib) / "sensor" / "data" / "etw"  # read by sensor/windows/providers.py
        target.mkdir(parents=True, exist_ok=True)
        for definition in sorted((root / "etw").glob("*.yaml")):
            shutil.copy(definition, target / definition.name)


setup(cmdclass={"build_py": BuildWithBpf})
