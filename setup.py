"""Copies the files the package ships (runtime/_ship.py) into the wheel, under runtime/_shipped."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIP = runpy.run_path(str(HERE / "runtime" / "_ship.py"))


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        for relative in (path for paths in SHIP["SHIPPED"].values() for path in paths):
            target = Path(self.build_lib) / "runtime" / SHIP["PACKAGE_DIR"] / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / relative, target)


setup(cmdclass={"build_py": BuildPy})
