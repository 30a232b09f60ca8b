"""Bundled example services, runnable by name: ``python -m runtime echo``.

They are user code: they use ``runtime``'s public API as an application would.
"""

from __future__ import annotations

from .._catalog import EXAMPLES, Example

__all__ = ["EXAMPLES", "Example"]
