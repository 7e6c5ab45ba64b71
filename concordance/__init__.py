"""Concordance: a strongly consistent configuration store on embedded Raft and SQLite."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
