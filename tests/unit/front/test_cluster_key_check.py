"""A node of a multi-member cluster without a cluster key says why it gets nowhere."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from concordance.config import Secrets
from concordance.front.app import _check_cluster_key
from concordance.protocol import wire
from concordance.testing.clock import ManualClock
from tests.unit.front.fakes import FakeNode, make_config


def test_multi_member_without_cluster_key_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = FakeNode(tmp_path)
    try:
        node.members = [wire.MemberStatus(f"n{i}", f"127.0.0.1:{i}", True, 0) for i in (1, 2, 3)]
        cfg = make_config(tmp_path, secrets=Secrets(api_key="k"))
        with caplog.at_level(logging.ERROR):
            outcome = asyncio.run(_check_cluster_key(cfg, node.clients(), ManualClock()))
        assert outcome == "multi-member cluster without a cluster key"
        assert "CONCORDANCE_CLUSTER_KEY is not set but this node is one of 3 members" in caplog.text
        node.members = node.members[:1]
        assert asyncio.run(_check_cluster_key(cfg, node.clients(), ManualClock())).startswith(
            "single member"
        )
    finally:
        node.close()
