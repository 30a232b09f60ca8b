"""``python -m runtime export dashboards|rules|kubernetes DIR``: what ships, written out.

The Grafana dashboard, the Prometheus alert and recording rules (with their promtool
tests) and the kustomize base are part of the installed package (``runtime/_shipped``,
put there by ``setup.py``); from a checkout they are read where they live.  The files
written are byte-identical to the repository's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._ship import PACKAGE_DIR, SHIPPED

__all__ = ["ExportError", "export", "main", "source"]

_PACKAGE = Path(__file__).resolve().parent


class ExportError(Exception):
    """What the user asked cannot be done (one line)."""


def source(relative: str) -> Path:
    """Where the shipped file *relative* is: in the package, or in this checkout."""
    for root in (_PACKAGE / PACKAGE_DIR, _PACKAGE.parent):
        path = root / relative
        if path.is_file():
            return path
    raise ExportError(f"{relative} is not in this installation (a broken install?)")


def export(kind: str, directory: Path) -> list[Path]:
    """Write the files of *kind* into *directory* (made if missing); return their paths."""
    if kind not in SHIPPED:
        raise ExportError(f"{kind!r} is not one of {', '.join(SHIPPED)}")
    sources = [source(relative) for relative in SHIPPED[kind]]
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"{directory} is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sources:
            target = directory / path.name
            target.write_bytes(path.read_bytes())
            written.append(target)
    except OSError as exc:
        raise ExportError(f"{directory}: {exc.strerror or exc}") from None
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and status 2, as every other setting the command refuses."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str], prog: str) -> int:
    """``export KIND DIR``: 0, one line per file written; 2 and one line on a problem."""
    parser = _Parser(
        prog=f"{prog} export",
        description="Write the files that ship with the runtime into DIR: the Grafana "
        "dashboard, the Prometheus rules (and their promtool tests), or the kustomize base.",
    )
    parser.add_argument("kind", choices=tuple(SHIPPED), help="what to write")
    parser.add_argument("directory", metavar="DIR", type=Path, help="where (made if missing)")
    args = parser.parse_args(argv)
    try:
        for path in export(args.kind, args.directory):
            print(path, flush=True)
    except ExportError as exc:
        parser.exit(2, f"{prog} export: error: {exc}\n")
    return 0
