"""TLS for the one port: the server context (HTTPS, WSS) and the context peers dial with.

Why one object for both: a node's certificate is its identity in both
directions. It serves the API and ``/stream`` with it (and consensus its peer
links, with the ``alpn`` contexts), and, when
``--tls-client-ca`` asks every caller for a certificate (mutual TLS), it
presents the same certificate when it dials a peer or a member's
``/cluster/members`` (``--join``). So the certificate needs the addresses
peers dial in its subjectAltName, and both the serverAuth and clientAuth
extended key usages (or none) when mTLS is on (docs/SECURITY.md).

Peers are verified against ``--tls-peer-ca``, else the client CA, else the
system store, with hostname (or IP) checking: a peer whose certificate comes
from another CA, or names another host, fails the handshake.

Reloading (SIGHUP): :meth:`TlsContexts.reload` loads the certificate and key
once, into new contexts, and swaps them in only if all of them loaded: a bad
file (a key that does not match, a half-written file) is refused and the old
pair stays, and no file change during the reload can leave a context with a
new certificate and an old key (loading into a live context replaces the
certificate before it reads the key). The listening socket keeps its one
context, ``server``; its SNI callback, which OpenSSL runs on every
ClientHello (with or without SNI), hands each new handshake the current
loaded context. Open connections are left alone; the socket never closes.
CA files are read at start only (OpenSSL adds to a trust store, it cannot
drop from one): changing a CA needs a restart of the front.
"""

from __future__ import annotations

import logging
import ssl

from concordance.config import ConfigError, NodeConfig

__all__ = ["TlsContexts"]

log = logging.getLogger(__name__)


class TlsContexts:
    """The server and peer-client SSL contexts of a TLS node (``cfg.tls`` must be true)."""

    def __init__(self, cfg: NodeConfig, *, alpn: str | None = None) -> None:
        """Args:
        alpn: consensus's peer links (``peerwire.ALPN``): both contexts offer
            only it, and the server verifies callers against the peer CA
            (``--tls-peer-ca``, else the client CA) instead of the client CA.
        """
        assert cfg.tls_cert is not None and cfg.tls_key is not None
        self.cert, self.key = cfg.tls_cert, cfg.tls_key
        self.mutual = cfg.tls_client_ca is not None
        self.client_ca = cfg.tls_client_ca
        self.peer_ca = cfg.tls_peer_ca or cfg.tls_client_ca
        # Peer links verify callers against the peer CA; the API against the client CA.
        self.server_ca = self.client_ca if alpn is None or not self.mutual else self.peer_ca
        self.alpn = alpn
        try:
            self.server, self.client = self._contexts()
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"TLS: cannot load {self.cert} / {self.key} or a CA file: {e}") from e
        self.serving = self.server  # the context new handshakes get (swapped by reload)
        self.server.sni_callback = self._hand_over

    def _contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = self._server_context(self.server_ca)
        client = self._client_context(self.peer_ca)
        if self.alpn is not None:
            server.set_alpn_protocols([self.alpn])
            client.set_alpn_protocols([self.alpn])
        return server, client

    def _hand_over(self, conn: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        if self.serving is not ctx:
            conn.context = self.serving

    def _server_context(self, client_ca: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=client_ca)
        return ctx

    def _client_context(self, peer_ca: str | None) -> ssl.SSLContext:
        # cafile None: the system store. Hostname checking is on (create_default_context).
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=peer_ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.mutual:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def reload(self) -> bool:
        """Read the certificate and key again (SIGHUP); False, old pair kept, if they are bad."""
        try:
            serving, client = self._contexts()
        except (OSError, ssl.SSLError) as e:
            log.error(
                "TLS: cannot reload %s / %s (%s); keeping the old pair", self.cert, self.key, e
            )
            return False
        self.serving, self.client = serving, client  # whole contexts, never half-loaded
        log.info("TLS: reloaded %s", self.cert)
        return True
