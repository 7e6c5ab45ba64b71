"""The simulated peer network of the node simulation: drops, delays, reorder, partitions.

Why: consensus takes its peer links as a ``PeerTransport`` (``consensus/peers.py``,
``net=``), so the drivers of a simulated cluster can be joined by this network
instead of TCP. Every fault comes from the simulation's seeded ``random.Random``,
and every delivery is a timer on the simulated loop (``sim_loop``), so one seed
is one schedule of frames.

Fault model (what a real network between nodes can do to Raft frames):

* each frame is dropped with probability ``drop``, else delivered after a
  delay drawn from ``delay`` (1-5 ms, or 10-300 ms on a slow network, longer
  than a heartbeat and up to an election timeout) plus, with probability ``reorder``, an extra
  ``jitter``, which lets a later frame overtake it;
* a partition (:meth:`SimNetwork.partition`) cuts every pair of nodes in
  different groups, both ways; frames already in flight still arrive (they
  were on the wire); :meth:`SimNetwork.heal` joins everything again;
* a node whose consensus is down (its links closed) loses what arrives for
  it, as a closed socket would.

Not modelled: duplication (TCP does not duplicate; Raft would cope), corrupt
frames (TLS and the frame checks reject them before Raft), bandwidth, and
the links' own queues, dials and backoff (``peers.py`` has unit tests).
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from concordance.consensus.peers import Deliver, PeerCounters

__all__ = ["CALM_DELAY", "MemoryLinks", "SimLinks", "SimNetwork"]

CALM_DELAY = (0.001, 0.005)  # seconds: a frame's delay on a quiet network (drawn between)


class SimNetwork:
    """The network between the simulated nodes of one run."""

    def __init__(
        self,
        rng: random.Random,
        *,
        drop: float = 0.0,
        delay: tuple[float, float] = CALM_DELAY,
        reorder: float = 0.0,
        jitter: float = 0.02,
    ) -> None:
        self.rng = rng
        self.drop = drop
        self.delay = delay
        self.reorder = reorder
        self.jitter = jitter
        self.links: dict[str, SimLinks] = {}
        self._group: dict[str, int] = {}  # node -> partition group; absent: group 0
        self.sent = 0
        self.dropped = 0

    def factory(self, node_id: str) -> Callable[[Deliver], SimLinks]:
        """What ``ConsensusDriver.open(net=...)`` takes for node ``node_id``."""
        return lambda deliver: SimLinks(self, node_id, deliver)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network between ``groups`` (nodes not named form one more group)."""
        self._group = {node: i + 1 for i, group in enumerate(groups) for node in group}

    def heal(self) -> None:
        self._group = {}

    def calm(self) -> None:
        """No more faults from now on (the end of a run: the cluster must converge)."""
        self.heal()
        self.drop = self.reorder = 0.0
        self.delay = CALM_DELAY

    def connected(self, a: str, b: str) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def carry(self, src: str, dst: str, frames: list[bytes]) -> int:
        """Put ``frames`` on the wire from ``src`` to ``dst``; how many were lost at once."""
        loop = asyncio.get_running_loop()
        rng = self.rng
        lost = 0
        lo, hi = self.delay
        for frame in frames:
            self.sent += 1
            if not self.connected(src, dst) or (self.drop and rng.random() < self.drop):
                self.dropped += 1
                lost += 1
                continue
            delay = lo + (hi - lo) * rng.random()
            if self.reorder and rng.random() < self.reorder:
                delay += self.jitter * rng.random()
            loop.call_later(delay, self._arrive, src, dst, frame)
        return lost

    def _arrive(self, src: str, dst: str, frame: bytes) -> None:
        links = self.links.get(dst)
        if links is not None and self.connected(src, dst):
            links.deliver(frame)
        else:
            self.dropped += 1


class MemoryLinks:
    """What every in-memory ``PeerTransport`` shares: nothing to accept, count, reload,
    dial or drain; a node's links register under its id in ``registry`` (its
    network's table) and leave it at ``close``. Subclasses say how ``send`` carries."""

    def __init__(self, registry: dict[str, Any], node_id: str, deliver: Deliver) -> None:
        self._registry = registry
        self.node_id = node_id
        self.deliver = deliver
        self.unroutable = 0
        self.refused = 0
        registry[node_id] = self

    def registered(self) -> bool:
        """Whether these are still the node's links (not closed, not replaced)."""
        return self._registry.get(self.node_id) is self

    def accept(self, conn: socket.socket, kind: bytes) -> None:
        conn.close()  # nothing dials an in-memory node through its front

    def counters(self) -> list[PeerCounters]:
        return []

    def reload(self) -> bool:
        return True

    def dial(self, addresses: Mapping[str, str]) -> None:
        pass

    def drain(self) -> None:
        pass

    def drained(self) -> bool:
        return True

    async def close(self, flush: float = 0.0) -> None:
        if self.registered():
            del self._registry[self.node_id]


class SimLinks(MemoryLinks):
    """One consensus's peer links on a :class:`SimNetwork` (a ``PeerTransport``)."""

    def __init__(self, net: SimNetwork, node_id: str, deliver: Deliver) -> None:
        self.net = net
        super().__init__(net.links, node_id, deliver)

    def send(self, peer: str, address: str, frames: list[bytes]) -> None:
        if self.registered():
            self.net.carry(self.node_id, peer, frames)
