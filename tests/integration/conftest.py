"""Fixtures that start real nodes; every test here carries the integration marker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Cluster, Node, short_tmpdir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temporary directory (IPC paths stay short), removed afterwards."""
    path = short_tmpdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """One real single-node cluster shared by a module's read-mostly tests."""
    root = short_tmpdir()
    n = Node("n1", data=root / "n1")
    try:
        n.start()
        yield n
    finally:
        n.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_node() -> Iterator[Node]:
    """A node of its own, for tests that kill or restart its roles."""
    root = short_tmpdir()
    n = Node("n1", data=root / "n1")
    try:
        n.start()
        yield n
    finally:
        n.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_cluster() -> Iterator[Cluster]:
    """A 3-node cluster of its own (no proxies), for tests that restart its roles."""
    root = short_tmpdir()
    c = Cluster(3, root=root, proxied=False)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
