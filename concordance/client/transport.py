"""One HTTP request, sent to the right node, retried only when that is safe.

The rules (API.md §3.1):

* A read may be retried anywhere: on a refused or broken connection, a 503, a
  504 or a proxy's body-less 5xx it moves on to the next endpoint.
* A write is retried only when it was certainly not applied: the connection
  was never made, or a node answered ``503 unavailable`` in Concordance's own
  error shape. Anything else after the write was sent (a ``504 timeout``, a
  reset, a read timeout, a proxy's body-less 502/503/504) raises
  :class:`OutcomeUnknown`, and the write is not sent again.
* ``Retry-After`` rests that node until then; when every node rests, the
  request waits for the first one back, with jitter so that many clients do
  not come back at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp

from concordance import __version__, errors
from concordance.client.endpoints import DOWN_REST_S, Endpoint, Endpoints
from concordance.client.failures import EndpointsUnavailable, OutcomeUnknown

__all__ = ["Transport", "describe_error"]

log = logging.getLogger("concordance.client")

MAX_WAIT_S = 5.0  # the longest one pause between two tries
_STATUS_ERRORS: dict[int, type[errors.ConcordanceError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.VersionConflict,
    410: errors.Compacted,
    413: errors.RequestTooLarge,
}


class _Retry(Exception):
    """This try failed in a way that is safe to try again (``rest_s``: how long that node rests)."""

    def __init__(self, reason: str, rest_s: float) -> None:
        super().__init__(reason)
        self.reason, self.rest_s = reason, rest_s


class _LocalFileError(Exception):
    """Writing ``save_to`` failed: the caller's file, not the network (never retried)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Transport:
    """The aiohttp session, the endpoints and the retry loop of one client."""

    def __init__(
        self,
        endpoints: list[str],
        api_key: str | None,
        retries: int,
        timeout_s: float,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.endpoints = Endpoints(endpoints)
        self.retries = retries
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = ssl_context
        self.headers = {"User-Agent": f"concordance-client/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use so that it belongs to the loop that uses it."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context or True)
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=connector,
                # Per request: see timeout(). A WebSocket's handshake is bounded by its caller.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            )
            # aiohttp resends a GET/PUT/DELETE once when its connection breaks (RFC 9112
            # §9.3.1). A write resent after its first copy applied writes twice (or answers
            # version_conflict for a CAS that succeeded), where the caller must learn that the
            # outcome is unknown. aiohttp has no public switch; aiohttp.test_utils turns it
            # off the same way.
            self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def timeout(self, extra_s: float = 0.0) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeout_s + extra_s, sock_connect=self.connect_timeout_s
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        write: bool,
        body: Any = None,
        params: dict[str, str] | None = None,
        extra_timeout_s: float = 0.0,
        save_to: Path | None = None,
        only: str | None = None,
    ) -> Any:
        """Send until an answer can be trusted; returns the JSON body (or, with ``save_to``,
        the number of bytes written there). ``only``: ask that one URL, once."""
        tried: list[str] = []
        delay = 0.05
        tries = 1 if only else self.retries + 1
        for attempt in range(tries):
            endpoint = Endpoint(only) if only else await self._pick(write, delay)
            try:
                return await self._once(
                    endpoint, method, path, write, body, params, extra_timeout_s, save_to
                )
            except _LocalFileError as e:
                raise e.error from None
            except _Retry as r:
                self.endpoints.failed(endpoint, r.rest_s)
                tried.append(f"{endpoint.url}: {r.reason}")
                if attempt < tries - 1:
                    log.debug("%s %s: %s; trying again", method, path, tried[-1])
                delay = min(delay * 2, MAX_WAIT_S)
        raise EndpointsUnavailable(f"gave up after {len(tried)} tries; last: {tried[-1]}", tried)

    async def _pick(self, write: bool, delay: float) -> Endpoint:
        """The endpoint to try now; when all rest, wait (with jitter) for the first back."""
        endpoint = self.endpoints.order(read=not write)[0]
        wait = endpoint.rest_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, MAX_WAIT_S) + random.uniform(0, delay))
        return endpoint

    async def _once(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        write: bool,
        body: Any,
        params: dict[str, str] | None,
        extra_timeout_s: float,
        save_to: Path | None,
    ) -> Any:
        url = f"{endpoint.url}{path}"
        try:
            async with self.session().request(
                method, url, json=body, params=params, timeout=self.timeout(extra_timeout_s)
            ) as resp:
                if resp.status < 400:
                    result = await self._success(resp, save_to)
                    self.endpoints.answered(endpoint)
                    return result
                error = await _error_of(resp)
                retry_after = _retry_after(resp)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise _Retry(f"cannot connect ({describe_error(e)})", DOWN_REST_S) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            if write:
                raise OutcomeUnknown(
                    f"{method} {path}: {describe_error(e)} after the request was sent to "
                    f"{endpoint.url}; it may or may not have been applied",
                    endpoint.url,
                ) from None
            raise _Retry(describe_error(e), DOWN_REST_S) from None
        return self._judge(endpoint, method, path, write, resp.status, error, retry_after)

    def _judge(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        write: bool,
        status: int,
        error: errors.ConcordanceError | None,
        retry_after: float | None,
    ) -> Any:
        """What a 4xx/5xx answer means for this request: raise, or ask for another try."""
        if error is None:  # no Concordance error body: a proxy, or a node half up
            if status < 500:
                cls = _STATUS_ERRORS.get(status, errors.InvalidRequest)
                raise cls(f"HTTP {status} from {endpoint.url} without an error body")
            if write:
                raise OutcomeUnknown(
                    f"{method} {path}: HTTP {status} without an error body from "
                    f"{endpoint.url}; the write may or may not have been applied",
                    endpoint.url,
                )
            raise _Retry(f"HTTP {status}", DOWN_REST_S)
        if type(error) is errors.Unavailable:
            raise _Retry(f"unavailable: {error.message}", retry_after or 1.0)
        if isinstance(error, errors.Timeout):
            if write:
                raise OutcomeUnknown(f"{method} {path}: {error.message}", endpoint.url)
            raise _Retry(f"timeout: {error.message}", 0.0)
        self.endpoints.answered(endpoint)
        raise error

    async def _success(self, resp: aiohttp.ClientResponse, save_to: Path | None) -> Any:
        if save_to is not None:
            part = save_to.with_name(save_to.name + ".part")
            size = 0
            try:
                f = part.open("wb")
            except OSError as e:
                raise _LocalFileError(e) from None
            try:
                with f:
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        try:
                            f.write(chunk)
                        except OSError as e:
                            raise _LocalFileError(e) from None
                        size += len(chunk)
                try:
                    part.replace(save_to)
                except OSError as e:
                    raise _LocalFileError(e) from None
            except BaseException:
                part.unlink(missing_ok=True)  # no half file left behind
                raise
            return size
        if resp.content_type == "application/json":
            return await resp.json()
        return await resp.read()


async def _error_of(resp: aiohttp.ClientResponse) -> errors.ConcordanceError | None:
    """The API error in the body, or None when the body is not Concordance's error shape."""
    try:
        body = await resp.json(content_type=None)
        detail = dict(body["error"])
        code = detail["code"]
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return None
    if not isinstance(code, str) or code not in errors.BY_CODE:
        return None
    detail["message"] = str(detail.get("message", ""))  # whatever the server sent, as text
    return errors.ConcordanceError.from_dict(detail)


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    text = resp.headers.get("Retry-After", "").strip()
    try:
        return min(max(float(text), 0.0), MAX_WAIT_S) if text else None
    except ValueError:
        return None


def describe_error(e: BaseException) -> str:
    """A short, one-line cause: 'connection refused', 'server disconnected', 'timed out'."""
    if isinstance(e, aiohttp.ClientConnectorError):
        if isinstance(e.os_error, ConnectionRefusedError):
            return "connection refused"
        inner = e.os_error
        return (inner.strerror or str(inner)).lower() if inner else "connection failed"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return str(e).splitlines()[0] if str(e) else type(e).__name__
