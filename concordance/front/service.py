"""The key-value operations of API.md §3, shared by the HTTP routes and the /stream methods.

Why a service layer: HTTP handlers and JSON-RPC methods differ only in how
they receive arguments and send answers; what a read or a write means
(consistent reads, sealing credentials, rendering values, CAS conflict
bodies, long-polls) is decided once, here. Inputs are already validated
(``validate``); outputs are API shapes with decoded values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import ConcordanceError, VersionConflict
from concordance.front.clients import Clients
from concordance.front.codec import Renderer
from concordance.front.reads import ReadIndexBatcher
from concordance.front.validate import CheckArgs, DeleteArgs, SetArgs
from concordance.front.watch import WatchHub
from concordance.front.writes import Proposer
from concordance.protocol import commands
from concordance.protocol.kv_keys import validate_key, validate_prefix
from concordance.protocol.payloads import Entry, WriteResult
from concordance.security.crypto import Cipher, DecryptionFailed

__all__ = ["KvService"]


class KvService:
    """Reads from local storage, writes through consensus, values rendered for the API.

    Args:
        clients: the node's role clients.
        proposer: the write path.
        hub: the watch fan-out (long-polls wait on it).
        cipher: seals values of sensitive keys before they are proposed.
        timeout_ms: the deadline of one request.
        clock: epoch milliseconds ("now" for expiry).
        timers: the monotonic clock of long-poll deadlines and read-index stalls.
    """

    def __init__(
        self,
        clients: Clients,
        proposer: Proposer,
        hub: WatchHub,
        cipher: Cipher,
        timeout_ms: int,
        clock: Callable[[], int],
        timers: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._consensus = clients.consensus
        self._storage = clients.storage
        self._proposer = proposer
        self._hub = hub
        self._cipher = cipher
        self.renderer = Renderer(cipher)
        self._timeout = timeout_ms / 1000
        self.clock = clock
        self._timers = timers
        self._read_indexes = ReadIndexBatcher(self._consensus, clock=timers)

    # -- reads -------------------------------------------------------------
    async def _read_index(self) -> int:
        """ReadIndex (thesis §6.4): the index storage must have applied before a consistent
        read is served; reads of one loop turn share one request (``ReadIndexBatcher``)."""
        return await self._read_indexes.next(self._timeout)

    def _local_index(self) -> int:
        """What a local read waits for storage to have applied: every write this front
        answered (``Proposer.read_floor``)."""
        return self._proposer.read_floor

    async def get(self, key: str, *, consistent: bool = False) -> dict[str, Any] | None:
        validate_key(key)
        index = await self._read_index() if consistent else self._local_index()
        entry = await self._storage.get(key, self.clock(), self._timeout, index)
        return self.renderer.entry(entry)

    async def list(
        self, prefix: str, limit: int, cursor: str | None, *, consistent: bool = False
    ) -> dict[str, Any]:
        validate_prefix(prefix)
        index = await self._read_index() if consistent else self._local_index()
        page = await self._storage.list(prefix, limit, cursor, self.clock(), self._timeout, index)
        return {
            "entries": [self.renderer.entry(e) for e in page.entries],
            "next": page.next,
            "revision": page.revision,
        }

    async def changes(self, prefix: str, since: int, limit: int, wait_ms: int) -> dict[str, Any]:
        """Change events under ``prefix`` after ``since``; with ``wait_ms``, long-poll.

        When nothing newer exists yet, wait for the first change under the
        prefix (or the timeout), then read again and answer.
        """
        validate_prefix(prefix)
        timers = self._timers
        deadline = timers.monotonic() + wait_ms / 1000
        async with self._hub.waiter(prefix, since) as waiter:
            page = await self._storage.changes(prefix, since, limit, self._timeout)
            while not page.changes:
                left = deadline - timers.monotonic()
                if left <= 0 or not await waiter.wait(left):
                    break
                page = await self._storage.changes(prefix, since, limit, self._timeout)
        return {
            "changes": [self.renderer.event(e) for e in page.changes],
            "revision": page.revision,
        }

    # -- writes ------------------------------------------------------------
    def _set_op(self, args: SetArgs) -> commands.Set:
        sealed = self._cipher.seal(args.key, args.value_json)
        return commands.Set(args.key, sealed, args.if_version, args.expires_at)

    async def _write(self, op: commands.Op) -> dict[str, Any]:
        return self.renderer.result(await self._submit(op))

    async def _submit(self, op: commands.Op) -> WriteResult:
        """Propose ``op``; its result record as storage gave it (values as stored text)."""
        try:
            result = await self._proposer.submit(op)
        except VersionConflict as e:
            self._render_current(e)
            raise
        if result is None:  # only a lone check has none; the front sends checks in batches
            raise TypeError(f"{type(op).__name__} applied without a result")
        return result

    def _render_current(self, error: ConcordanceError) -> None:
        current = error.extra.get("current")
        if isinstance(current, Entry):
            try:
                error.extra["current"] = self.renderer.entry(current)
            except (DecryptionFailed, ValueError):
                error.extra["current"] = None

    async def set(self, args: SetArgs) -> dict[str, Any]:
        return await self._write(self._set_op(args))

    async def set_text(self, args: SetArgs) -> str:
        """:meth:`set`'s answer as JSON text (``Renderer.result_text``): what ``PUT`` sends.
        Why: decoding the stored value only to encode it again was a tenth of the front's
        Python per write at 64 clients (docs/PERFORMANCE.md, 7 December, evening)."""
        return self.renderer.result_text(await self._submit(self._set_op(args)))

    async def delete(self, args: DeleteArgs) -> dict[str, Any]:
        return await self._write(commands.Delete(args.key, args.if_version))

    async def delete_text(self, args: DeleteArgs) -> str:
        """:meth:`delete`'s answer as JSON text: what ``DELETE`` of a key sends."""
        return self.renderer.result_text(
            await self._submit(commands.Delete(args.key, args.if_version))
        )

    async def delete_prefix(self, prefix: str) -> dict[str, Any]:
        validate_prefix(prefix)
        return await self._write(commands.DeletePrefix(prefix))

    async def batch(self, ops: Sequence[SetArgs | DeleteArgs | CheckArgs]) -> dict[str, Any]:
        return self.renderer.result(await self._submit(self._batch(ops)))

    async def batch_text(self, ops: Sequence[SetArgs | DeleteArgs | CheckArgs]) -> str:
        """:meth:`batch`'s answer as JSON text, the values spliced in as stored
        (``Renderer.result_text``): what ``POST /batch`` sends."""
        return self.renderer.result_text(await self._submit(self._batch(ops)))

    def _batch(self, ops: Sequence[SetArgs | DeleteArgs | CheckArgs]) -> commands.Batch:
        built: list[commands.BatchOp] = []
        for op in ops:
            if isinstance(op, SetArgs):
                built.append(self._set_op(op))
            elif isinstance(op, DeleteArgs):
                built.append(commands.Delete(op.key, op.if_version))
            else:
                built.append(commands.Check(op.key, op.version))
        return commands.Batch(tuple(built))
