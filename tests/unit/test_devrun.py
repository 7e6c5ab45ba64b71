"""``make run``'s development secrets: private from their first byte, never via a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from concordance.node.devrun import _dev_secret


def test_a_dev_secret_is_created_private_and_kept(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: the mode must not depend on it
    try:
        path = tmp_path / "dev-api-key"
        assert _dev_secret(path, "s3cret") == "s3cret"
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _dev_secret(path, "other") == "s3cret"  # kept across restarts


def test_a_symlink_at_a_dev_secret_s_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "dev-api-key"
    link.symlink_to(target)  # dangling: a planted link to where another user could read
    with pytest.raises(SystemExit, match="symlink"):
        _dev_secret(link, "s3cret")
    assert not target.exists()
