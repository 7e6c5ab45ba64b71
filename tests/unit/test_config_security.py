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


def test_a_cluster_without_its_own_key_starts_on_the_api_key_unless_required(
    tmp_path: Path,
) -> None:
    cfg(tmp_path, peers=PEERS).validate()  # API.md §1: the API key stands in (with a warning)
    strict = Secrets(api_key="api", require_cluster_key=True)
    with pytest.raises(ConfigError, match=r"CONCORDANCE_CLUSTER_KEY is not set.*REQUIRE"):
        cfg(tmp_path, peers=PEERS, secrets=strict).validate()
    with pytest.raises(ConfigError, match="CONCORDANCE_CLUSTER_KEY"):
        cfg(tmp_path, join="127.0.0.1:4101", secrets=strict).validate()
    cfg(tmp_path, secrets=strict).validate()  # a single node does not need one
    cfg(tmp_path, peers={"n1": "127.0.0.1:4100"}, secrets=strict).validate()
    own = Secrets(api_key="api", cluster_key="c", require_cluster_key=True)
    cfg(tmp_path, peers=PEERS, secrets=own).validate()
    cfg(tmp_path, peers=PEERS, secrets=Secrets(), insecure=True).validate()  # dev: explicit


def test_the_cluster_key_defaults_to_the_api_key_unless_required() -> None:
    assert Secrets(api_key="api").peer_key == "api"
    assert not Secrets(api_key="api").own_cluster_key
    assert Secrets(api_key="api", cluster_key="c").peer_key == "c"
    assert Secrets(api_key="api", require_cluster_key=True).peer_key is None
    env = {"CONCORDANCE_API_KEY": "a", "CONCORDANCE_REQUIRE_CLUSTER_KEY": "1"}
    assert Secrets.from_env(env).require_cluster_key


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
