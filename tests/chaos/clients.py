"""Concurrent KV clients that record a history for the linearizability checker.

Each client is one asyncio task doing one request at a time: a consistent get, a set, a
CAS (``ifVersion``) or a delete (sometimes with ``ifVersion``) of one of a few keys, chosen
by the client's own ``random.Random`` (seeded from the run's seed). Values are unique
(``c{client}-{n}``), so every value read names the write that produced it.

A client is bound to a node (client i starts at node i mod N) and moves to the next one
when a request fails at the connection level or times out. Outcomes (API.md §3.1):

* an answer: :func:`linearizability.from_http` (200/404/409 ok, 503 fail, 504 unknown);
* no connection at all (``ClientConnectorError``: nothing was sent): fail;
* anything else without an answer (timeout, reset, disconnect): unknown.

Calls and returns are ``time.monotonic()``; ``ret`` is None for unknown outcomes.

``local-get`` checks read-your-writes (API.md §3.1: a write is answered once applied on the
node that answered, "so a read on that same node afterwards sees it"): a plain
(non-consistent) get of a key, on the node that acknowledged this client's last write of
it. Plain gets may be stale in general, so they are not in the linearizability history;
they are judged by ``checks.read_your_writes``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from concordance.testing.linearizability import Deleted, Operation, Write, Written, from_http

PREFIX = "tenant:chaos/"
TIMEOUT = 5.0  # seconds; the node's own deadline is 5 s too (then 504)
MIX = (("get", 0.4), ("set", 0.25), ("cas", 0.2), ("delete", 0.15), ("local-get", 0.1))
EXPECTED = {200, 404, 409, 503, 504}  # anything else is an anomaly worth reporting


@dataclass
class Record:
    """One request as sent and answered, for reports (the checker only needs ``op``)."""

    op: Operation
    node: str
    status: int | None  # HTTP status, None without an answer
    error: str = ""  # error code from the body, or the exception's name
    revision: int | None = None  # revision of an applied write


@dataclass
class LocalRead:
    """A plain get on the node that acknowledged the client's last write of the key."""

    client: int
    key: str
    node: str
    acked: str  # "set" or "delete"
    acked_version: int
    call: float
    status: int | None
    version: int | None = None
    value: Any = None


@dataclass
class History:
    records: list[Record] = field(default_factory=list)
    local_reads: list[LocalRead] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # unexpected answers

    def add(self, record: Record) -> None:
        self.records.append(record)

    @property
    def operations(self) -> list[Operation]:
        return [r.op for r in self.records]

    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> outcome -> count (outcome: ok / fail / unknown, ok split by answer)."""
        out: dict[str, Counter[str]] = {}
        for r in self.records:
            c = out.setdefault(r.op.kind, Counter())
            c[r.op.status] += 1
            if r.status is not None:
                c[f"http {r.status}"] += 1
            else:
                c[f"no answer: {r.error}"] += 1
        local = out.setdefault("local-get", Counter()) if self.local_reads else Counter()
        for read in self.local_reads:
            local[f"http {read.status}" if read.status else "no answer"] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def session(headers: dict[str, str]) -> aiohttp.ClientSession:
    """An HTTP session that sends every request at most once.

    aiohttp resends a request with an idempotent method (GET, PUT, DELETE) once when its
    connection breaks (RFC 9112 §9.3.1): a PUT that reached a node which then died would be
    sent again to the restarted node, and a refused resend would hide that the first one
    may have applied. ``aiohttp.test_utils`` turns it off the same way.
    """
    http = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0))
    assert hasattr(http, "_retry_connection"), "aiohttp changed: check how to disable retries"
    http._retry_connection = False
    return http


def keys(count: int) -> list[str]:
    return [f"{PREFIX}k{i}" for i in range(count)]


class Client:
    """One client task; ``urls()`` gives the nodes it may use (members change)."""

    def __init__(
        self,
        cid: int,
        rng: random.Random,
        urls: Callable[[], list[str]],
        key_names: list[str],
        http: aiohttp.ClientSession,
        history: History,
        think: float = 0.02,
    ) -> None:
        self.cid = cid
        self.rng = rng
        self.urls = urls
        self.keys = key_names
        self.http = http
        self.history = history
        self.think = think
        self.node = cid  # index into urls()
        self.seq = 0
        self.known: dict[str, int] = {}  # key -> last version this client saw
        self.acked: dict[str, tuple[str, str, int]] = {}  # key -> (node, kind, version)
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            await self.step()
            await asyncio.sleep(self.rng.uniform(0, self.think))

    async def step(self) -> Record | None:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        key = self.rng.choice(self.keys)
        urls = self.urls()
        url = urls[self.node % len(urls)]
        arg: Write | int | None = None
        if kind == "local-get":
            await self.local_get(key, urls)
            return None
        if kind in ("set", "cas"):
            self.seq += 1
            if_version = None
            if kind == "cas":
                guess = self.known.get(key, 0)
                if_version = (
                    guess if self.rng.random() < 0.8 else max(0, guess + self.rng.choice((-1, 1)))
                )
            arg = Write(f"c{self.cid}-{self.seq}", if_version)
        elif kind == "delete" and self.rng.random() < 0.5:
            arg = self.known.get(key, 0) or 1
        record = await self.request(url, kind, key, arg)
        self.history.add(record)
        self.learn(key, record)
        out = record.op.output
        if record.op.status == "ok" and isinstance(out, Written | Deleted):
            self.acked[key] = (url, "set" if isinstance(out, Written) else "delete", out.version)
        if record.status is None:
            self.node += 1  # that node may be down: try the next one
            if record.op.status == "fail":  # refused: do not spin while every node is down
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))
        return record

    async def local_get(self, key: str, urls: list[str]) -> None:
        if key not in self.acked or self.acked[key][0] not in urls:
            return  # no acknowledged write of it yet, or that node is no longer a member
        url, acked, version = self.acked[key]
        call = time.monotonic()
        read = LocalRead(self.cid, key, url, acked, version, call, None)
        try:
            async with self.http.get(
                f"{url}/api/v1/kv/{key}", timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp:
                read.status = resp.status
                if resp.status == 200:
                    body = await resp.json()
                    read.version, read.value = body["version"], body["value"]
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        self.history.local_reads.append(read)

    def learn(self, key: str, record: Record) -> None:
        out = record.op.output
        version = getattr(out, "version", None)
        current = getattr(out, "current", None)
        if current is not None:
            version = getattr(current, "version", 0)
        if isinstance(version, int):
            self.known[key] = version

    async def request(self, url: str, kind: str, key: str, arg: Write | int | None) -> Record:
        if kind == "get":
            method, path, body = "GET", f"/api/v1/kv/{key}?consistent=true", None
        elif kind == "delete":
            q = "" if arg is None else f"?ifVersion={arg}"
            method, path, body = "DELETE", f"/api/v1/kv/{key}{q}", None
        else:
            assert isinstance(arg, Write)
            body = {"value": arg.value}
            if arg.if_version is not None:
                body["ifVersion"] = arg.if_version
            method, path = "PUT", f"/api/v1/kv/{key}"
        return await do_request(
            self.http, self.cid, url, method, path, body, key, kind, arg, self.history
        )


async def do_request(
    http: aiohttp.ClientSession,
    cid: int,
    url: str,
    method: str,
    path: str,
    body: Any,
    key: str,
    kind: Any,
    arg: Write | int | None,
    history: History | None = None,
    timeout: float = TIMEOUT,
) -> Record:
    """Send one request and turn what happened into a :class:`Record`."""
    call = time.monotonic()
    try:
        async with http.request(
            method, f"{url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            status = resp.status
            try:
                payload = await resp.json(content_type=None)
            except ValueError:
                payload = None
        ret = time.monotonic()
    except aiohttp.ClientConnectorError as e:  # never connected: nothing was sent
        op = Operation(cid, key, kind, arg, None, call, time.monotonic(), "fail")
        return Record(op, url, None, type(e).__name__)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        op = Operation(cid, key, kind, arg, None, call, None, "unknown")
        return Record(op, url, None, type(e).__name__)
    err = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = str(payload["error"].get("code", ""))
    if status not in EXPECTED or (status == 404 and kind not in ("get", "delete")):
        if history is not None:
            history.anomalies.append(
                {"t": call, "node": url, "method": method, "path": path, "status": status,
                 "body": payload}
            )  # fmt: skip
        op = Operation(cid, key, kind, arg, None, call, None, "unknown")
        return Record(op, url, status, err or "unexpected")
    op = from_http(cid, key, kind, arg, call, ret, status, payload)
    revision = payload.get("revision") if status == 200 and isinstance(payload, dict) else None
    return Record(op, url, status, err, revision)
