"""The Proposer on its own: how ``results`` and ``dropped`` resolve a waiting write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from concordance import wire
from concordance.commands import Command, Delete
from concordance.errors import Unavailable
from concordance.front.clients import ConsensusClient
from concordance.front.writes import Proposer

KEY = "tenant:acme/k"


class ScriptedConsensus:
    """``propose`` forwards (index 0) after running ``script`` on the proposed bytes,
    i.e. whatever consensus and storage report while the request is in flight."""

    def __init__(self, script: Callable[[Sequence[bytes]], None]) -> None:
        self.script = script

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        self.script(commands)
        return 0


def proposer_with(script: Callable[[Proposer, Sequence[bytes]], None]) -> Proposer:
    box: list[Proposer] = []
    consensus = ScriptedConsensus(lambda commands: script(box[0], commands))
    proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0)
    box.append(proposer)
    return proposer


def request_id(data: bytes) -> int:
    return Command.decode(data).request_id


def test_dropped_fails_the_write_with_unavailable() -> None:
    def refuse(p: Proposer, commands: Sequence[bytes]) -> None:
        p.fail_dropped(wire.Dropped(tuple(commands)))

    async def main() -> None:
        proposer = proposer_with(refuse)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(proposer.submit(Delete(KEY)), 5)
        assert proposer.pending == 0

    asyncio.run(main())


def test_a_result_that_arrived_first_is_kept() -> None:
    """Unless its result already arrived: a report of the same command after the
    result (it cannot happen over an at-most-once transport) does not overwrite it."""
    result: dict[str, Any] = {"key": KEY, "deleted": True}

    def apply_then_refuse(p: Proposer, commands: Sequence[bytes]) -> None:
        p.deliver(wire.Results("n1", ((request_id(commands[0]), True, result),)))
        p.fail_dropped(wire.Dropped(tuple(commands)))

    async def main() -> None:
        proposer = proposer_with(apply_then_refuse)
        assert await asyncio.wait_for(proposer.submit(Delete(KEY)), 5) == result

    asyncio.run(main())
