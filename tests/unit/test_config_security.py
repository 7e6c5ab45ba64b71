"""The security rules of a node's configuration: the cluster key, TLS and key-file flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from concordance.config import ConfigError, NodeConfig, Secrets

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


def test_a_cluster_needs_its_own_cluster_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CONCORDANCE_CLUSTER_KEY is not set.*no longer"):
        cfg(tmp_path, peers=PEERS).validate()
    with pytest.raises(ConfigError, match="CONCORDANCE_CLUSTER_KEY"):
        cfg(tmp_path, join="127.0.0.1:4101").validate()
    cfg(tmp_path).validate()  # a single node does not
    cfg(tmp_path, peers={"n1": "127.0.0.1:4100"}).validate()
    cfg(tmp_path, peers=PEERS, secrets=Secrets(api_key="api", cluster_key="c")).validate()
    cfg(tmp_path, peers=PEERS, secrets=Secrets(), insecure=True).validate()  # dev: explicit


def test_the_cluster_key_no_longer_defaults_to_the_api_key() -> None:
    assert Secrets(api_key="api").peer_key is None
    assert Secrets(api_key="api", cluster_key="c").peer_key == "c"


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
