"""What ships with the package: the dashboard, the rules and the kustomize base, exportable.

``python -m runtime export dashboards|rules|kubernetes DIR`` writes them byte-identical to
the repository's files, from a checkout and from a real wheel (built here by pip, with
setup.py's copy step, then run from its unpacked files with this checkout out of reach).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from _proc import ROOT, env

from runtime._ship import PACKAGE_DIR, SHIPPED
from runtime.export import export


def test_every_manifest_and_dashboard_ships() -> None:
    """A new manifest or dashboard cannot be forgotten in the list of what ships."""
    kubernetes = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "deploy/kubernetes").glob("*.yaml")
    )
    assert sorted(SHIPPED["kubernetes"]) == kubernetes
    dashboards = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "dashboards").glob("*.json"))
    assert sorted(SHIPPED["dashboards"]) == dashboards
    assert "deploy/prometheus/rules.yml" in SHIPPED["rules"]


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_export_from_a_checkout_is_byte_identical(kind: str, tmp_path: Path) -> None:
    written = export(kind, tmp_path / "out")
    assert [p.name for p in written] == [Path(rel).name for rel in SHIPPED[kind]]
    for relative, path in zip(SHIPPED[kind], written, strict=True):
        assert path.read_bytes() == (ROOT / relative).read_bytes()


def _run(*args: str, cwd: Path = ROOT, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], cwd=cwd, env={**env(), **extra},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_bad_export_is_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for args, says in (
        (("export", "grafana", str(tmp_path)), "invalid choice: 'grafana'"),
        (("export", "rules", str(tmp_path / "file")), "is not a folder"),
        (("export", "rules"), "the following arguments are required: DIR"),
    ):
        done = _run(*args)
        assert done.returncode == 2, done
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
        assert says in done.stderr and done.stderr.startswith("python -m runtime export: error:")


@pytest.mark.timeout(300)
def test_the_wheel_ships_them_and_exports_them(tmp_path: Path) -> None:
    # Build from a copy: pip builds in the source tree (build/, egg-info), not here.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "runtime", source / "runtime", ignore=ignore)
    for folder in ("dashboards", "deploy"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
         str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=240, env=env(),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("socketserver_runtime-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for relative in (rel for paths in SHIPPED.values() for rel in paths):
            member = f"runtime/{PACKAGE_DIR}/{relative}"
            assert archive.read(member) == (ROOT / relative).read_bytes(), member
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        urls = [line for line in archive.read(metadata).decode().splitlines()
                if line.startswith("Project-URL: ")]  # fmt: skip
        assert any(line.startswith("Project-URL: Documentation, https://") for line in urls), urls
        archive.extractall(tmp_path / "installed")
    # Run the wheel's own code, from a folder with no checkout above it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import runtime.export as e; print(e.source('dashboards/"
         "socketserver-overview.json'))"],
        cwd=elsewhere, capture_output=True, text=True, timeout=60,
        env={**env(), "PYTHONPATH": str(tmp_path / "installed")},
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(tmp_path / "installed" / "runtime" / PACKAGE_DIR))
    for kind in SHIPPED:
        done = _run("export", kind, str(tmp_path / kind), cwd=elsewhere,
                    PYTHONPATH=str(tmp_path / "installed"))  # fmt: skip
        assert done.returncode == 0, done.stderr
        for relative in SHIPPED[kind]:
            exported = tmp_path / kind / Path(relative).name
            assert exported.read_bytes() == (ROOT / relative).read_bytes(), relative
