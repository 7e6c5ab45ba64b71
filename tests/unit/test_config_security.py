"""The security rules of a node's configuration: the cluster key, TLS and key-file flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from concordance.config import ConfigError, NodeConfig, Secrets
from concordance.environment import read_node

PEERS = {"n1": "127.0.0.1:4100", "n2": "127.0.0.1:4101", "n3": "127.0.0.1:4102"}


def cfg(tmp_path: Path, **over: object) -> NodeConfig:
    secrets = over.pop("secrets", Secrets(api_key="api"))
    base: dict[str, object] = {
        "node_id": "n1",
        "listen": "127.0.0.1:4100",
        "data_dir": str(tmp_path),
    }
    base.update(over)
    return NodeConfig(secrets=secrets, **base)  # type: ignore[arg-type]


def test_a_multi_member_node_needs_a_cluster_key_of_its_own(tmp_path: Path) -> None:
    """API.md v1.1 §1: no default, and not a client's key; --insecure changes nothing."""
    for secrets, problem in (
        (Secrets(api_key="api"), "CONCORDANCE_CLUSTER_KEY is not set"),
        (Secrets(api_key="api", cluster_key="api"), "equals CONCORDANCE_API_KEY"),
        (
            Secrets(api_key="api", agent_key="agent", cluster_key="agent"),
            "equals CONCORDANCE_AGENT_API_KEY",
        ),
    ):
        with pytest.raises(ConfigError, match=problem) as refused:
            cfg(tmp_path, peers=PEERS, secrets=secrets).validate()
        assert "\n" not in str(refused.value)  # one line on stderr
        with pytest.raises(ConfigError, match=problem):
            cfg(tmp_path, join="127.0.0.1:4101", secrets=secrets).validate()
    with pytest.raises(ConfigError, match="CONCORDANCE_CLUSTER_KEY is not set"):
        cfg(tmp_path, peers=PEERS, secrets=Secrets(), insecure=True).validate()
    alone = Secrets(api_key="api")
    cfg(tmp_path, secrets=alone).validate()  # a single node does not need one
    cfg(tmp_path, peers={"n1": "127.0.0.1:4100"}, secrets=alone).validate()
    own = Secrets(api_key="api", agent_key="agent", cluster_key="c")
    cfg(tmp_path, peers=PEERS, secrets=own).validate()


def test_the_cluster_key_has_no_default() -> None:
    assert Secrets(api_key="api").peer_key is None
    assert Secrets(api_key="api", cluster_key="c").peer_key == "c"
    env = {"CONCORDANCE_API_KEY": "a", "CONCORDANCE_CLUSTER_KEY": "c"}
    assert read_node(env).secrets.peer_key == "c"
    assert read_node({"CONCORDANCE_API_KEY": "a"}).secrets.peer_key is None


def test_tls_flags(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        cfg(tmp_path, tls_cert=str(pem)).validate()
    with pytest.raises(ConfigError, match="need --tls-cert"):
        cfg(tmp_path, tls_client_ca=str(pem)).validate()
    with pytest.raises(ConfigError, match=r"--tls-key .*not a readable file"):
        cfg(tmp_path, tls_cert=str(pem), tls_key=str(tmp_path / "none")).validate()
    with pytest.raises(ConfigError, match="--keys"):
        cfg(tmp_path, keys_file=str(tmp_path / "none")).validate()
    ok = cfg(tmp_path, tls_cert=str(pem), tls_key=str(pem)).validate()
    assert ok.scheme == "https" and cfg(tmp_path).scheme == "http"
