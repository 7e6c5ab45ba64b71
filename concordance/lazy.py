"""Lazy re-exports for a package's ``__init__`` (PEP 562).

A package that re-exports names from heavy modules (ZeroMQ in ``ipc``, aiohttp
in ``client``) would load them for anyone importing one light submodule;
``concordance node`` and the keepers import such submodules on their way to
``exec``, where every import is start-up time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``package.<where[name]>`` on
    first use and keeps it in the package's namespace."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__
