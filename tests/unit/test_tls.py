"""TLS contexts: mutual TLS settings, and a reload that refuses a bad pair and keeps the old one."""

from __future__ import annotations

import shutil
import ssl
import types
from pathlib import Path

import pytest

from concordance.config import ConfigError, NodeConfig, Secrets
from concordance.security import tls as tls_module
from concordance.security.tls import TlsContexts
from tests.integration.certs import CA, Leaf


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


def _served_serial(server: ssl.SSLContext, ca: Path, client_pair: Leaf | None = None) -> int:
    """Handshake with ``server`` in memory and return the serial of the certificate it shows."""
    client_ctx = ssl.create_default_context(cafile=str(ca))
    if client_pair is not None:
        client_ctx.load_cert_chain(client_pair.cert, client_pair.key)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", srv)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_new_handshakes_get_the_reloaded_pair_and_a_refused_one_changes_nothing(
    tmp_path: Path,
) -> None:
    ca = CA(tmp_path / "ca")
    first = ca.issue("n1")
    tls = TlsContexts(cfg(tmp_path, first.cert, first.key))
    listening = tls.server  # the socket's context never changes
    assert _served_serial(listening, ca.cert) == first.serial
    second = ca.issue("n1")
    assert tls.reload() and tls.server is listening
    assert _served_serial(listening, ca.cert) == second.serial
    shutil.copy(ca.issue("other").key, second.key)  # mismatched: refused
    assert tls.reload() is False
    assert _served_serial(listening, ca.cert) == second.serial


def test_a_file_change_during_a_reload_never_leaves_a_half_loaded_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files change right after the reload's first read (an operator's copy racing the
    SIGHUP): the reload may keep the old pair or take the new one, never a mixture."""
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("n1")
    tls = TlsContexts(cfg(tmp_path, leaf.cert, leaf.key, tls_client_ca=str(ca.cert)))
    other_key = ca.issue("other").key
    reads = []

    class Racing(ssl.SSLContext):
        def load_cert_chain(self, *args: object, **kwargs: object) -> None:
            super().load_cert_chain(*args, **kwargs)  # type: ignore[arg-type]
            reads.append(1)
            if len(reads) == 1:
                shutil.copy(other_key, leaf.key)  # the key changes under the reload

    names = {name: getattr(ssl, name) for name in dir(ssl) if not name.startswith("__")}
    monkeypatch.setattr(tls_module, "ssl", types.SimpleNamespace(**{**names, "SSLContext": Racing}))
    assert tls.reload() is False  # refused, not raised half-way
    monkeypatch.undo()
    client = ca.issue("client")
    assert _served_serial(tls.server, ca.cert, client) == leaf.serial  # the old, whole pair
    assert tls.client.cert_store_stats()["x509_ca"] == 1
