"""constraints.txt: the runtime's dependencies pinned, so the image ships what the tests ran.

``make deps`` installs the tests' environments with ``-c constraints.txt`` and the
Dockerfile builds its wheels with it (``tests/deploy/test_image.py`` checks the image's
versions); here: every distribution the runtime depends on, on this Python, is pinned,
and is installed at its pin; nothing else is pinned.
"""

from __future__ import annotations

import importlib.metadata as metadata

from _dockerfile import pinned
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def dependency_closure(root: str = "socketserver-runtime") -> set[str]:
    """Every distribution *root* needs on this Python (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        for text in metadata.requires(todo.pop()) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in seen:
                seen.add(name)
                todo.append(requirement.name)
    return seen


def test_every_dependency_of_the_runtime_is_pinned_and_nothing_else() -> None:
    closure, pins = dependency_closure(), set(pinned())
    assert closure - pins == set(), "not pinned: run `make constraints`"
    assert pins - closure == set(), "pinned, but the runtime does not need it"


def test_the_environment_runs_the_pinned_versions() -> None:
    installed = {name: metadata.version(name) for name in pinned()}
    assert installed == pinned()
