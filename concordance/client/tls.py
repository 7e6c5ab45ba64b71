"""The client's side of TLS: an ``ssl.SSLContext`` from a CA bundle and a client certificate.

Why here and not in aiohttp's defaults: a private cluster's certificates are
signed by its own CA, which the system store does not hold, and mutual TLS
needs the client's certificate; both are plain files the operator names.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from concordance.client.failures import ClientConfigError

__all__ = ["TlsFiles", "ssl_context"]


@dataclass(frozen=True)
class TlsFiles:
    """``cacert`` verifies the nodes; ``cert`` + ``key`` identify this client (mutual TLS)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.cacert or self.cert or self.key)


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A verifying client context: the system CAs, or only ``cacert`` when given."""
    for label, path in (("CA bundle", files.cacert), ("certificate", files.cert),
                        ("key", files.key)):  # fmt: skip
        if path is not None and not Path(path).is_file():
            raise ClientConfigError(f"TLS {label} {path!r} is not a readable file")
    if files.key and not files.cert:
        raise ClientConfigError("a TLS key needs its certificate (--cert)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.cacert)
        if files.cert:
            ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as e:
        raise ClientConfigError(f"TLS files cannot be loaded: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
