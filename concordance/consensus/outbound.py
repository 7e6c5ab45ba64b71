"""Where the consensus driver's messages go: the peer links, the fronts, storage.

The driver's outbound plumbing, apart from its loop and handlers
(``driver.py``): Raft frames are grouped per peer and handed to the peer links
(``peers.py``), which never wait; pushes to the fronts go to every front the
role has heard from (during a hand-over the old one still waits for
answers), a gone one forgotten; storage is one routing id. A mixin of
:class:`~concordance.consensus.driver.ConsensusDriver`, which owns the state
declared below.
"""

from __future__ import annotations

import asyncio
import logging

from concordance.config import NodeConfig
from concordance.consensus.peers import PeerTransport
from concordance.errors import IpcError, PeerGone
from concordance.ipc.fronts import Fronts
from concordance.ipc.sockets import Server
from concordance.protocol import wire
from concordance.raft.core import RaftCore
from concordance.raft.entries import Membership
from concordance.raft.messages import Message
from concordance.raft.ready import Role

log = logging.getLogger("concordance.consensus")

STORAGE = b"storage"


class Outbound:
    """The driver's sends to peers, fronts and storage (state set by the driver's ``__init__``)."""

    cfg: NodeConfig
    core: RaftCore
    server: Server
    peers: PeerTransport
    fronts: Fronts
    _frames_in: list[bytes]
    _wake: asyncio.Event
    _addresses: dict[str, str]
    _role: Role

    def _frame_in(self, frame: bytes) -> None:
        """A peer link received ``frame`` (called on the loop, no task switch)."""
        self._frames_in.append(frame)
        self._wake.set()

    def reload_tls(self) -> bool:
        """SIGHUP: re-read the certificate and key the peer links use."""
        return self.peers.reload()

    def _peer_drops(self) -> int:
        drops = sum(c.dropped_full + c.dropped_stale for c in self.peers.counters())
        return drops + self.peers.unroutable

    async def _send_messages(self, messages: tuple[Message, ...]) -> None:
        """Hand the frames to the peer links, grouped per peer (written at once on a
        connected link with room; queued otherwise, never waiting: ``consensus/peers.py``)."""
        group: dict[str, list[bytes]] = {}
        for msg in messages:
            group.setdefault(msg.dst, []).append(wire.encode_raft(msg))
        for peer, frames in group.items():
            self.peers.send(peer, self._addresses.get(peer, ""), frames)

    async def _report_dropped(self, commands: tuple[bytes, ...]) -> None:
        """Tell the front which of its forwarded proposals were refused (certainly not
        appended): their writes get ``unavailable`` now. Best effort: unsent, they time out."""
        await self._to_fronts("dropped", wire.Dropped(commands))

    async def _to_fronts(self, type: str, body: wire.Body) -> None:
        """Push to every front (during a hand-over the old one still waits for
        answers); best effort, a front that is gone is forgotten."""
        for front in self.fronts.all():
            try:
                await self.server.send(front, type, body)
            except IpcError as e:
                if isinstance(e, PeerGone):
                    self.fronts.forget(front)
                log.debug("cannot send %s to %r: %s", type, front, e)

    async def _send_storage(self, type: str, body: wire.Body) -> None:
        await self.server.send(STORAGE, type, body)

    def _remember_addresses(self, membership: Membership) -> None:
        # Old addresses are kept: a node being removed still needs its last messages.
        for node_id, address in membership.addresses:
            self._addresses[node_id] = address

    async def _tell_leadership(self, term: int | None = None) -> None:
        """Push ``leadership`` to storage (its TTL reaper proposes only on the leader).
        Best effort: storage's next ``hello`` is answered with it again."""
        body = wire.Leadership(self._role is Role.LEADER, self.core.term if term is None else term)
        try:
            await self._send_storage("leadership", body)
        except IpcError as e:
            log.debug("leadership to storage lost: %s", e)
