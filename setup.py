"""Builds the eBPF objects into the package before setuptools copies package data.

The wheel carries sensor/bpf/*.bpf.o, so installed sensors need only libbpf1 at run time,
never clang or kernel headers.
"""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self):
        root = Path(__file__).parent
        if (root / "bpf").is_dir():
            subprocess.run(["make", "-C", str(root), "bpf"], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
