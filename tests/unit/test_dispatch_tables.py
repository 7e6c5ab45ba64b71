"""The roles' dispatch tables against docs/PROTOCOL.md, and the answer to a type not served.

Each role dispatches by a table from body type to handler (``ConsensusDriver._HANDLERS``,
``StorageService._REQUESTS`` / ``_NOTES`` / ``_FROM_CONSENSUS``). A message type the
protocol sends a role but its table lacks would be answered ``invalid_request`` or
dropped: these tests read the type tables of PROTOCOL.md §3 and ask the role's table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zmq.asyncio

from concordance import errors, ipc
from concordance.consensus import ConsensusDriver
from concordance.ipc import fronts
from concordance.protocol import wire
from concordance.storage.service import StorageService
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from tests.unit.consensus_harness import FakeFront, make_cfg, running, temp_dir, wait_leader
from tests.unit.consensus_harness import run as run_consensus
from tests.unit.storage_service_harness import bench, short_tmp
from tests.unit.storage_service_harness import run as run_storage

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \|(.*)$")


def _rows(section: str) -> list[tuple[str, list[str]]]:
    """The (type, other cells) rows of the first table under the heading ``section``."""
    text = PROTOCOL.read_text()
    start = text.index(f"\n### {section}")
    end = text.index("\n### ", start + 1)
    rows = []
    for line in text[start:end].splitlines():
        if m := _ROW.match(line):
            rows.append((m.group(1), [c.strip() for c in m.group(2).split("|")]))
    assert rows, f"no message table found under {section!r}"
    return rows


def _body(name: str) -> type[wire.Body]:
    assert name in wire.IPC_TYPES, f"PROTOCOL.md names {name!r}, which wire.IPC_TYPES lacks"
    return wire.IPC_TYPES[name]


def test_consensus_has_a_handler_for_every_type_sent_to_it_and_no_other() -> None:
    documented = {_body(name) for name, _ in _rows("3.1 To consensus")}
    assert documented == set(ConsensusDriver._HANDLERS)


def test_storage_has_a_handler_for_every_type_sent_to_it_and_no_other() -> None:
    from_front = {_body(name) for name, _ in _rows("3.3 To storage")}
    # front_hello is in §3.1's table: the front says it to both roles
    from_front.add(wire.FrontHello)
    assert from_front == set(StorageService._REQUESTS) | set(StorageService._NOTES)
    assert not set(StorageService._REQUESTS) & set(StorageService._NOTES)
    from_consensus = {
        _body(name) for name, cells in _rows("3.2 From consensus") if cells[0] == "storage"
    }
    assert from_consensus == set(StorageService._FROM_CONSENSUS)


def test_request_handlers_serve_requests_and_notes_are_one_way() -> None:
    names = {body: name for name, body in wire.IPC_TYPES.items()}
    for body in StorageService._REQUESTS:
        assert names[body] in wire.REPLIES, f"{names[body]} is served but is not a request"
    for body in StorageService._NOTES:
        assert names[body] in wire.ONE_WAY, f"{names[body]} is a note but not one-way"


def test_consensus_answers_a_request_it_does_not_serve_with_invalid_request() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), ctx):
                front = FakeFront(ctx, d)
                try:
                    await wait_leader(front)
                    with pytest.raises(errors.InvalidRequest, match="consensus does not serve"):
                        await front.request("wait_applied", wire.WaitApplied(1))
                    assert (await front.propose(b"still served")).index > 0
                finally:
                    await front.close()

    run_consensus(main)


def test_storage_answers_a_request_it_does_not_serve_with_invalid_request() -> None:
    clock = ManualClock()

    async def main(ctx: zmq.asyncio.Context) -> None:
        net = MemoryIpc(clock)
        async with bench(None, d, sockets=net, clock=clock, sync=False) as b:
            front = net.client(ipc.endpoint(d, "storage"), fronts.routing_id(1))
            with pytest.raises(errors.InvalidRequest, match="storage does not serve read_index"):
                await front.request("read_index", wire.ReadIndex(), 2.0)
            status = await front.request("storage_status", wire.StorageStatus(), 2.0)
            assert isinstance(status, wire.StorageStatusOk)
            assert b.service is not None and not b.service.waiting

    with short_tmp() as d:
        run_storage(main)
