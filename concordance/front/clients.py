"""The narrow views of the other roles that the front needs, as Protocols.

The front never touches a socket to consensus or storage directly: it talks
to these Protocols, which ``ipc_clients`` implements over ZeroMQ
(docs/PROTOCOL.md) and the unit tests implement with in-memory fakes.

Contract shared by every implementation:

* Every call takes ``timeout`` (seconds): the most it may take. Idempotent
  calls retry inside it and raise ``Unavailable`` when the role did not
  answer in time (a read may always be retried, so its failure is a 503).
* ``propose`` returns once consensus accepted the commands (the log index,
  0 when forwarded to the leader). ``Unavailable`` means certainly not
  appended; ``IpcError`` means the outcome is unknown (the caller keeps
  waiting for the result event until its own deadline). A forwarded command
  that the receiver refused comes back later, one-way, as ``dropped``
  (certainly not appended either).
* Other role errors arrive as the ``ConcordanceError`` the role raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from concordance.protocol import wire
from concordance.protocol.payloads import Entry

__all__ = [
    "Clients",
    "ConsensusClient",
    "DroppedHandler",
    "EventSource",
    "StorageClient",
]

DroppedHandler = Callable[[wire.Dropped], None]


class ConsensusClient(Protocol):
    """The consensus role, as the front uses it."""

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int: ...

    async def read_index(self, timeout: float) -> int: ...

    async def status(self, timeout: float) -> wire.StatusOk: ...

    async def peer_links(self, timeout: float) -> wire.PeerLinksOk:
        """The counters of consensus's peer links (``/metrics``)."""
        ...

    async def conf_change(self, op: str, node_id: str, address: str, timeout: float) -> None: ...

    async def transfer(self, to: str, timeout: float) -> None: ...

    async def snapshot_now(self, timeout: float) -> wire.SnapshotNowOk: ...

    def on_dropped(self, handler: DroppedHandler) -> None:
        """Route ``dropped`` messages from consensus to ``handler`` (called on the loop)."""
        ...


class StorageClient(Protocol):
    """The storage role's local reads, as the front uses them.

    Entries and change events are ``concordance.protocol.payloads`` records, ``value``
    the JSON text bytes as stored.
    """

    async def get(self, key: str, now: int, timeout: float, min_index: int = 0) -> Entry | None: ...

    async def list(
        self,
        prefix: str,
        limit: int,
        cursor: str | None,
        now: int,
        timeout: float,
        min_index: int = 0,
    ) -> wire.ListOk: ...

    async def changes(
        self, prefix: str, since: int, limit: int, timeout: float
    ) -> wire.ChangesOk: ...

    async def wait_applied(self, index: int, timeout: float) -> int: ...

    async def backup(self, path: str, timeout: float) -> wire.BackupOk: ...

    async def status(self, timeout: float) -> wire.StorageStatusOk: ...

    async def watch(self) -> None:
        """Ask storage for change batches from now on: handed over before any later
        request, so a revision read after it is followed by every later batch."""

    def unwatch(self) -> None:
        """No watcher and no long-poll left: storage may stop publishing change
        batches (best effort; a lost one only leaves them coming)."""


class EventSource(Protocol):
    """Storage's events: change batches and write results, in publication order."""

    async def recv(self) -> wire.ChangeBatch | wire.Results: ...


@dataclass(frozen=True, slots=True)
class Clients:
    """The front's connections to the other roles of its node."""

    consensus: ConsensusClient
    storage: StorageClient
    events: EventSource
