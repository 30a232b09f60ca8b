"""Pin the runtime's dependencies in ``constraints.txt``: what the tests install, the image ships.

    python deploy/constraints.py          (or: make constraints)

pip resolves ``pip install .`` afresh for this Python (``--dry-run --ignore-installed
--report``: nothing is installed), and every distribution it would install except the
runtime itself is written as ``name==version``.  ``make deps`` installs the tests' virtual
environments with ``-c constraints.txt`` and the Dockerfile builds its wheels with it, so
the image runs the versions the tests ran; ``tests/deploy/test_constraints.py`` checks the
file covers the runtime's dependencies and the environment matches it, and
``tests/deploy/test_image.py`` that the image does.  The package's own metadata keeps its
ranges (``pyproject.toml``): a library user resolves for themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
HEADER = """\
# The runtime's dependencies, pinned: what `make test` installs (pip -c) and the image ships.
# Written by `make constraints` (deploy/constraints.py): pip's resolution of `pip install .`.
"""


def resolve() -> dict[str, str]:
    """Distribution name -> version that ``pip install .`` would install now."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--report", "-", str(ROOT)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    pins = {}
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower().replace("_", "-") != "socketserver-runtime":
            pins[name] = version
    return pins


def main() -> int:
    pins = resolve()
    lines = [
        f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda p: p[0].lower())
    ]
    CONSTRAINTS.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"{CONSTRAINTS.name}: {len(lines)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
