"""Which node to ask next: the endpoint list, who answered last, who is resting.

Why it is shaped like this: writes go to the node that answered the last
request (any node forwards to the leader, but the one that answered is known
to be up), reads are spread round-robin over the nodes not resting, and a node
that failed or asked for ``Retry-After`` rests until then, so a dead node costs
one failed connect per rest period rather than one per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from concordance.client.failures import ClientConfigError

__all__ = ["DEFAULT_ENDPOINT", "DOWN_REST_S", "Endpoint", "Endpoints", "parse_endpoints"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4100"

DOWN_REST_S = 2.0  # how long a node that refused or broke a connection is tried last


def parse_endpoints(spec: str | Iterable[str], tls: bool = False) -> list[str]:
    """``"a:4100,b:4100"`` or a list -> normalised base URLs (``http://a:4100``).

    A bare ``HOST:PORT`` gets ``https://`` when TLS settings were given, else ``http://``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for raw in items:
        text = raw.strip().rstrip("/")
        if not text:
            continue
        if "://" not in text:
            text = ("https://" if tls else "http://") + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientConfigError(f"endpoint {raw.strip()!r} is not http(s)://HOST:PORT")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise ClientConfigError(f"endpoint {raw.strip()!r} has a bad port") from None
        if parts.path not in ("", "/"):
            raise ClientConfigError(f"endpoint {raw.strip()!r} must not have a path")
        urls.append(f"{parts.scheme}://{parts.netloc}")
    if not urls:
        raise ClientConfigError("no endpoint given")
    return list(dict.fromkeys(urls))


@dataclass(eq=False)
class Endpoint:
    url: str
    rest_until: float = 0.0  # monotonic time before which this node is tried last

    def resting(self, now: float) -> bool:
        return now < self.rest_until


class Endpoints:
    """The endpoint list and its health, shared by every request of one client."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.all = [Endpoint(u) for u in urls]
        self._preferred = 0
        self._next_read = 0

    @property
    def preferred(self) -> Endpoint:
        """The endpoint that answered last (the first one until something answered)."""
        return self.all[self._preferred]

    def order(self, read: bool) -> list[Endpoint]:
        """Every endpoint once, in the order to try them: reads start at the next one in
        turn, writes at the preferred one; resting endpoints go last."""
        n = len(self.all)
        if read:
            start = self._next_read % n
            self._next_read += 1
        else:
            start = self._preferred
        ring = [self.all[(start + i) % n] for i in range(n)]
        now = time.monotonic()
        return [e for e in ring if not e.resting(now)] + [e for e in ring if e.resting(now)]

    def answered(self, endpoint: Endpoint) -> None:
        endpoint.rest_until = 0.0
        if endpoint in self.all:
            self._preferred = self.all.index(endpoint)

    def failed(self, endpoint: Endpoint, rest_s: float = DOWN_REST_S) -> None:
        endpoint.rest_until = max(endpoint.rest_until, time.monotonic() + rest_s)
