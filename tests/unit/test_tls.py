"""TLS contexts: mutual TLS settings, and a reload that refuses a bad pair and keeps the old one."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from concordance.config import ConfigError, NodeConfig, Secrets
from concordance.tls import TlsContexts
from tests.integration.certs import CA


def cfg(tmp_path: Path, cert: Path, key: Path, **over: object) -> NodeConfig:
    return NodeConfig(
        node_id="n1",
        listen="127.0.0.1:4100",
        data_dir=str(tmp_path),
        tls_cert=str(cert),
        tls_key=str(key),
        secrets=Secrets(api_key="k"),
        **over,  # type: ignore[arg-type]
    ).validate()


def test_mutual_tls_requires_client_certificates(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("n1")
    tls = TlsContexts(cfg(tmp_path, leaf.cert, leaf.key, tls_client_ca=str(ca.cert)))
    assert tls.server.verify_mode == ssl.CERT_REQUIRED
    assert tls.client.check_hostname and tls.client.verify_mode == ssl.CERT_REQUIRED
    plain = TlsContexts(cfg(tmp_path, leaf.cert, leaf.key))
    assert plain.server.verify_mode == ssl.CERT_NONE and not plain.mutual


def test_reload_refuses_a_mismatched_pair(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("n1")
    tls = TlsContexts(cfg(tmp_path, leaf.cert, leaf.key, tls_client_ca=str(ca.cert)))
    assert tls.reload()  # the same files again: fine
    other = ca.issue("other")
    shutil.copy(other.key, leaf.key)  # a key that does not match the certificate
    assert tls.reload() is False
    ca.issue("n1")  # a fresh matching pair
    assert tls.reload() is True


def test_an_unloadable_pair_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(ConfigError, match="TLS: cannot load"):
        TlsContexts(cfg(tmp_path, junk, junk))
