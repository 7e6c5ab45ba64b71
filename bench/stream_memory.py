"""``python -m bench.stream_memory``: the front's memory per idle ``/stream`` watcher.

Starts one node, opens ``--connections`` WebSocket connections that each ask
for ``permessage-deflate`` (as browsers do) and subscribe to a prefix of their
own, and prints the serving front's RSS before and after. ``--source DIR``
measures another checkout, for A/B runs (docs/PERFORMANCE.md, "Scale, third
pass").

    python -m bench.stream_memory [--connections 1000] [--no-compress] [--source DIR]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp

from bench.clusters import KEY, ConcordanceSystem, wait_until
from concordance.node.supervise import serving_front


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def measure(system: ConcordanceSystem, connections: int, compress: bool) -> str:
    member = system.leader()
    assert member is not None
    front = serving_front(system.root / member.name)
    assert front is not None
    before = rss_mb(front)
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        conns = []
        for i in range(connections):
            ws = await session.ws_connect(f"{member.url}/stream", compress=15 if compress else 0)
            await ws.send_json(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "watch/subscribe",
                    "params": {"prefix": f"tenant:mem{i}/"},
                }
            )
            reply = await ws.receive(timeout=30)
            assert reply.type == aiohttp.WSMsgType.TEXT and "subscriptionId" in reply.data, reply
            conns.append(ws)
        await asyncio.sleep(1.0)
        after = rss_mb(front)
        negotiated = conns[0].compress if conns else 0
        for ws in conns:
            await ws.close()
    per = 1024 * (after - before) / max(connections, 1)
    return (
        f"{connections} connections, compression asked {compress}, negotiated {bool(negotiated)}:"
        f" front RSS {before:.1f} -> {after:.1f} MB, {per:.1f} KB per connection"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--no-compress", action="store_true", help="do not ask for deflate")
    parser.add_argument("--source", type=Path, default=None, help="another checkout to measure")
    args = parser.parse_args()
    system = ConcordanceSystem(args.source, nodes=1)
    system.start()
    try:
        wait_until(lambda: system.leader() is not None, what="a leader")
        print(asyncio.run(measure(system, args.connections, not args.no_compress)))
    finally:
        system.stop()


if __name__ == "__main__":
    main()
