"""The client library against a real 3-node cluster: failover and a watch that never gaps.

The watch tests kill the node a watch is subscribed on, or silently stall the
connection to it (a proxy that stops forwarding: no FIN, no RST), and check
that every change arrives exactly once, in revision order, from another node.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import pytest

from concordance import errors
from concordance.client import Change, Client, OutcomeUnknown, Watch
from tests.integration.helpers import API_KEY, Cluster, short_tmpdir
from tests.integration.netproxy import Link, ProxyLoop


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = short_tmpdir()
    c = Cluster(3, root=root, proxied=False)
    try:
        c.start()
        c.wait_for_leader()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


async def put_once(client: Client, key: str, value: int) -> None:
    """Create ``key`` exactly once, as a careful caller does: compare-and-swap on absence,
    and after an unknown outcome the same CAS again (a conflict means the first applied)."""
    while True:
        try:
            await client.put(key, value, if_version=0)
            return
        except OutcomeUnknown:
            continue
        except errors.VersionConflict:
            return


async def take(watch: Watch, n: int) -> list[Change]:
    return [await asyncio.wait_for(anext(watch), 60) for _ in range(n)]


def check_exactly_once(changes: list[Change], prefix: str, n: int) -> None:
    assert [c.key for c in changes] == [f"{prefix}k{i}" for i in range(n)]
    revisions = [c.revision for c in changes]
    assert revisions == sorted(set(revisions))


def test_a_watch_resumes_without_gap_on_a_stalled_connection(cluster: Cluster) -> None:
    prefix = "tenant:stall/"
    n2, n3 = cluster["n2"], cluster["n3"]

    async def scenario() -> None:
        proxy = ProxyLoop()
        link = Link(proxy, n3.port, name="client->n3")
        try:
            urls = [f"http://127.0.0.1:{link.port}", n2.url]
            async with Client(urls, API_KEY, heartbeat_s=1.0) as watcher, \
                    Client(n2.url, API_KEY, retries=20) as writer:  # fmt: skip
                async with watcher.watch(prefix) as watch:
                    await put_once(writer, f"{prefix}k0", 0)
                    first = await take(watch, 1)
                    assert watch.endpoint == urls[0]  # through the proxy
                    link.blackhole()  # the connection stays open, nothing moves
                    for i in range(1, 4):
                        await put_once(writer, f"{prefix}k{i}", i)
                    rest = await take(watch, 3)
                    assert watch.endpoint == n2.url and watch.reconnects >= 1
                check_exactly_once(first + rest, prefix, 4)
        finally:
            link.unblock()
            link.close()
            proxy.close()

    asyncio.run(scenario())


def test_reads_and_writes_fail_over_and_a_watch_resumes_when_its_node_dies(
    cluster: Cluster,
) -> None:
    prefix = "tenant:die/"
    n1 = cluster["n1"]
    urls = [cluster[i].url for i in cluster.ids]

    async def scenario() -> None:
        async with Client(urls, API_KEY, retries=20) as watcher, \
                Client(urls, API_KEY, retries=20) as client:  # fmt: skip
            async with watcher.watch(prefix) as watch:
                for i in range(3):
                    await put_once(client, f"{prefix}k{i}", i)
                before = await take(watch, 3)
                assert watch.endpoint == n1.url  # the first endpoint in turn
                await asyncio.to_thread(n1.kill)
                for i in range(3, 6):
                    await put_once(client, f"{prefix}k{i}", i)
                after = await take(watch, 3)
                assert watch.endpoint != n1.url and watch.reconnects >= 1
            check_exactly_once(before + after, prefix, 6)
            for _ in range(len(urls)):  # every read lands on a live node
                assert (await client.get(f"{prefix}k5", consistent=True)).value == 5

    asyncio.run(scenario())
