"""The /stream pinger: one task visits every connection once a period, in even slices with
a loop turn between them; a connection that answers nothing after a ping is closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from concordance.front.app_state import HUB, STREAMS
from concordance.front.stream import PING, Outbox
from concordance.front.stream_ping import Pinger
from concordance.testing.poll import until
from tests.unit.front.fakes import FULL, harness


class Conn:
    """A connection whose client answers every ping at once, or never (``silent``)."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.heard = False
        self.pings = 0
        self.aborted = False

    def ping(self) -> None:
        self.pings += 1
        if not self.silent:
            self.heard = True  # its pong

    def abort(self) -> None:
        self.aborted = True


def _one_round(n: int, pinger_args: dict[str, int]) -> tuple[list[int], list[float]]:
    """Connections pinged before each yield to the loop, and each wait, over one round."""

    async def main() -> tuple[list[int], list[float]]:
        conns = [Conn() for _ in range(n)]
        slices: list[int] = []
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            slices.append(sum(c.pings for c in conns) - sum(slices))
            if len(waits) == pinger.slices_for(n):  # one whole round: end it
                for c in conns:
                    pinger.discard(c)

        pinger = Pinger(period=30.0, sleep=sleep, **pinger_args)
        for c in conns:
            pinger.add(c)
        await until(lambda: not pinger.running, "the pinger to end with its last connection")
        assert [c.pings for c in conns] == [1] * n  # each once in the round
        return slices, waits

    return asyncio.run(main())


def test_a_round_visits_every_connection_once_in_even_slices() -> None:
    slices, waits = _one_round(1000, {"slices": 120, "max_visits": 10})
    assert len(slices) == 120 and sum(slices) == 1000
    assert set(slices) == {8, 9}  # 1000 / 120, never bunched
    assert waits == [0.25] * 120  # the round spans the period


def test_many_connections_are_spread_over_more_slices_of_at_most_max_visits() -> None:
    slices, waits = _one_round(10_000, {"slices": 120, "max_visits": 8})
    assert len(slices) == 1250 and set(slices) == {8}  # not 120 slices of 83-84
    assert waits == [30.0 / 1250] * 1250  # the round still spans the period
    few, _ = _one_round(10, {"slices": 120, "max_visits": 8})
    assert len(few) == 120 and sum(few) == 10  # few connections: the period's 120 slices


def test_a_silent_connection_is_closed_one_round_after_its_ping() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def sleep(seconds: float) -> None:
            await never.wait()

        pinger = Pinger(sleep=sleep)
        answers, silent, busy = Conn(), Conn(silent=True), Conn(silent=True)
        for c in (answers, silent, busy):
            pinger.add(c)
        for c in (answers, silent, busy):
            pinger.visit(c)
        assert [c.pings for c in (answers, silent, busy)] == [1, 1, 1]
        busy.heard = True  # no pong, but a request came: it is alive
        for c in (answers, silent, busy):
            pinger.visit(c)
        assert (answers.aborted, silent.aborted, busy.aborted) == (False, True, False)
        assert [c.pings for c in (answers, busy)] == [2, 2] and silent.pings == 1
        assert len(pinger) == 2 and pinger.aborted == 1
        pinger.visit(silent)  # gone: not visited again
        assert silent.pings == 1
        pinger.stop()
        assert not pinger.running

    asyncio.run(main())


def test_outbox_hands_a_ping_before_queued_messages_and_none_once_closed() -> None:
    async def main() -> None:
        box = Outbox(4)
        assert box.offer("a")
        box.ping()
        box.ping()  # at most one pending
        assert [await box.get(), await box.get()] == [PING, "a"]
        box.close()
        box.ping()
        assert await box.get() is None

    asyncio.run(main())


def test_over_the_wire_an_answering_client_stays_and_a_silent_one_is_dropped(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            pinger = h.app[HUB].pinger
            pinger.period, pinger.slices = 0.2, 2
            auth = {"Authorization": f"Bearer {FULL}"}
            # autoping off on both: this test sees the pings and answers them itself
            good = await h.client.ws_connect("/stream", headers=auth, autoping=False)
            mute = await h.client.ws_connect("/stream", headers=auth, autoping=False)
            await mute.send_str(
                '{"jsonrpc":"2.0","id":1,"method":"watch/subscribe","params":{"prefix":"tenant:a/"}}'
            )
            await until(lambda: h.app[HUB].watchers == 1, "the mute client's subscription")
            for _ in range(4):  # four pings, each answered
                msg = await asyncio.wait_for(good.receive(), 5)
                assert msg.type == aiohttp.WSMsgType.PING
                await good.pong(msg.data)
            # the mute client never reads, so never answers: closed, its watch dropped
            await until(lambda: pinger.aborted == 1, "the silent client to be closed")
            await until(lambda: h.app[HUB].watchers == 0, "its subscription to be dropped")
            assert len(h.app[STREAMS]) == 1 and len(pinger) == 1
            await good.send_str('{"jsonrpc":"2.0","id":2,"method":"kv/get","params":{"key":"x"}}')
            while (msg := await asyncio.wait_for(good.receive(), 5)).type != aiohttp.WSMsgType.TEXT:
                assert msg.type == aiohttp.WSMsgType.PING
                await good.pong(msg.data)
            assert '"id":2' in msg.data
            await good.close()
            await mute.close()

    asyncio.run(main())
