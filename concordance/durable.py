"""fsync by path: the one helper behind every "rename, then make the name durable" step."""

from __future__ import annotations

import contextlib
import os

__all__ = ["fsync_dir", "fsync_path"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync the file or directory at ``path`` (a directory: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str], *, best_effort: bool = False) -> None:
    """Make names created, renamed or removed in directory ``path`` durable.

    ``best_effort`` ignores an ``OSError``, for callers where a platform that
    cannot fsync a directory must not fail the write.
    """
    if best_effort:
        with contextlib.suppress(OSError):
            fsync_path(path)
    else:
        fsync_path(path)
