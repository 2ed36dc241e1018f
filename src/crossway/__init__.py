"""Crossway: a microservice platform for Python.

`import crossway` is light (the `crossway` command imports it on every run):
the SDK's public names — `crossway.Client`, `crossway.CallPolicy`,
`crossway.lifespan` … everything in `crossway.sdk.__all__` — are loaded on
first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossway.sdk import *  # noqa: F403  (the names __getattr__ serves)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # dunder probes (copy, pickle, doctest …) never load the SDK
        raise AttributeError(f"module 'crossway' has no attribute {name!r}")
    sdk = importlib.import_module("crossway.sdk")
    if name not in sdk.__all__:
        raise AttributeError(f"module 'crossway' has no attribute {name!r}")
    value = getattr(sdk, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    sdk = importlib.import_module("crossway.sdk")
    return sorted(set(globals()) | set(sdk.__all__))
