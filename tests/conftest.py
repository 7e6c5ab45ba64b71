"""Suite-wide settings: tests that run whole clusters never run two at a time.

Each multi-node test starts a dozen or more processes with one-second election
timeouts; two of them side by side on a 2-core machine would starve each
other into spurious elections. They share one xdist group (run with
``--dist loadgroup``), so one worker runs them in turn while the others run
everything else.
"""

from __future__ import annotations

import pytest

CLUSTER_FILES = (
    "test_cluster.py",
    "test_membership.py",
    "test_restore.py",
    "test_chaos_short.py",
    "test_client_cluster.py",
    "test_tls_cluster.py",
    "test_restart_under_load.py",
)


# tryfirst: xdist's own hook turns group marks into ``@group`` node-id suffixes, and a
# mark added after it has run is ignored: the cluster tests would spread over all workers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in CLUSTER_FILES:
            item.add_marker(pytest.mark.xdist_group("cluster"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test that ``--dist loadgroup`` did not group (it fails silently)."""
    loadgroup = getattr(item.config.option, "loadgroup", False)  # xdist sets it on workers
    if loadgroup and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            "--dist loadgroup did not group this test: this pytest / pytest-xdist pair does"
            " not suffix node ids (see the pin in pyproject.toml)",
            pytrace=False,
        )
