"""The read floor: the index a local read asks storage to have applied (PROTOCOL.md §3.8).

Why: storage commits state.db only when it acknowledges, so a storage crash
loses what it had applied and answered but not committed (consensus resends
it). A read on the node must still see every write the node answered
(API.md §3.1), so a local read asks storage for ``min_index`` = the floor.

* Every ``results`` event raises it to storage's applied index then: every
  write this front answered is at or below it.
* A front that just started has answered nothing, but an earlier front of
  the node may have, just before it went (a front restart that comes with a
  storage crash). Its floor therefore starts at consensus's commit index,
  asked once at start: storage applies only what consensus committed, so
  every answered write is at or below it (a consensus restarted meanwhile
  may say less, never more than storage will reach).
* Local reads wait for that first answer (``FIRST_TRY`` at most). Without
  consensus (down, restarting) they go on from what ``results`` tell, as
  before, while the floor keeps asking in the background: a node without
  consensus still serves local reads.
"""

from __future__ import annotations

import asyncio
import logging

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.front.clients import ConsensusClient

__all__ = ["ReadFloor"]

log = logging.getLogger(__name__)

FIRST_TRY = 1.0  # seconds local reads wait at most for consensus's first answer at start
RETRY_TIMEOUT = 2.0  # seconds one later ask may take
RETRY_EVERY = 0.5  # seconds between two asks while consensus does not answer
TRIES = 60  # asks in all (about a minute); then the floor rests on ``results`` alone


class ReadFloor:
    """The highest index known to cover every write this node's fronts answered."""

    def __init__(self, timers: Clock = SYSTEM_CLOCK) -> None:
        self.index = 0
        self._timers = timers
        self._first_try = asyncio.Event()  # set once the first ask is answered or given up

    def raise_to(self, index: int) -> None:
        if index > self.index:
            self.index = index

    async def current(self) -> int:
        """The floor, once the first ask at start has its outcome."""
        if not self._first_try.is_set():
            await self._first_try.wait()
        return self.index

    async def settled(self) -> None:
        """Wait until the first ask at start has its outcome (tests and startup)."""
        await self._first_try.wait()

    async def seed(self, consensus: ConsensusClient) -> str:
        """Start the floor at consensus's commit index (the front's background task)."""
        try:
            for attempt in range(TRIES):
                try:
                    status = await consensus.status(FIRST_TRY if attempt == 0 else RETRY_TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # consensus not up (yet): reads go on meanwhile
                    log.debug("read floor: consensus did not answer (%s)", e)
                    self._first_try.set()
                    await self._timers.sleep(RETRY_EVERY)
                    continue
                self.raise_to(status.commit)
                return f"starts at consensus's commit index {status.commit}"
            return "consensus did not answer; the floor rests on results alone"
        finally:
            self._first_try.set()
