"""Which fronts a role pushes to (``concordance.ipc.fronts``, PROTOCOL.md §1)."""

from __future__ import annotations

from concordance.ipc.fronts import Fronts, incarnation_of, routing_id


def test_routing_ids_carry_the_incarnation_and_nothing_else_is_a_front() -> None:
    assert routing_id(7) == b"front.7"
    assert incarnation_of(b"front.7") == 7
    for other in (b"front", b"storage", b"front.", b"front.x1", b"front.-1", b"fronts.2"):
        assert incarnation_of(other) is None, other


def test_the_newest_front_is_current_and_all_are_known_until_forgotten() -> None:
    fronts = Fronts()
    assert fronts.current is None and fronts.all() == ()
    fronts.note(b"storage")
    assert fronts.current is None  # not a front
    fronts.note(routing_id(3))
    fronts.note(routing_id(4))  # a hand-over: the successor connects
    fronts.note(routing_id(3))  # the old one still talks while it drains
    assert fronts.current == routing_id(4)
    assert fronts.all() == (routing_id(4), routing_id(3))
    fronts.forget(routing_id(4))  # the successor died: the old one is all there is
    assert fronts.current == routing_id(3)
    fronts.forget(routing_id(3))
    fronts.forget(routing_id(3))  # twice is harmless
    assert fronts.current is None and fronts.all() == ()
    fronts.note(routing_id(3))  # heard from again after being forgotten
    assert fronts.current == routing_id(3)
