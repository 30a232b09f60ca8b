"""The runtime's version: a leaf every module may import (never the package ``__init__``)."""

__version__ = "0.1.0"
