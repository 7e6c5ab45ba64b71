"""The codec engine on its own: records, the fast constructor, strict decoding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from concordance.protocol import codec


@dataclass(frozen=True, slots=True)
class Point:
    o: int  # a field name the generated code must not confuse with its own locals
    label: str = ""
    flag: bool = False


REC = codec.record(Point, [codec.uint, codec.exact(str), codec.exact(bool)], tag=9)


def test_maker_builds_what_the_constructor_builds() -> None:
    made = REC.make(3, "x", True)
    assert made == Point(3, "x", True)
    assert type(made) is Point
    with pytest.raises(AttributeError):
        made.o = 4  # type: ignore[misc]  # still frozen


def test_maker_keeps_post_init() -> None:
    @dataclass(frozen=True, slots=True)
    class Sorted:
        items: tuple[int, ...]

        def __post_init__(self) -> None:
            object.__setattr__(self, "items", tuple(sorted(self.items)))

    assert codec.maker(Sorted)((2, 1)).items == (1, 2)


def test_tuple_and_map_layouts() -> None:
    p = Point(3, "x", True)
    assert REC.to_tuple(p) == (9, 3, "x", True)
    assert REC.to_map(p) == {"o": 3, "label": "x", "flag": True}
    assert REC.from_tuple((9, 3, "x", True)) == p
    assert codec.decode_array(REC, (3,)) == Point(3)
    assert codec.decode_map(REC, {"o": 3}) == Point(3)


@pytest.mark.parametrize(
    "bad",
    [
        {"o": -1},
        {"o": True},
        {"label": "x"},
        {"o": 1, "other": 2},
        {"o": 1, "label": "x", "zzz": 1},
        [1],
    ],
)
def test_decode_map_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        codec.decode_map(REC, bad)


def test_decode_array_rejects_a_wrong_count() -> None:
    with pytest.raises(ValueError):
        codec.decode_array(REC, ())
    with pytest.raises(ValueError):
        codec.decode_array(REC, (1, "x", True, 4))


def test_fixed_and_homogeneous_arrays() -> None:
    pair = codec.fixed_array([codec.exact(int), codec.any_value])
    assert pair([1, {"a": 1}]) == (1, {"a": 1})
    for bad in ([1], [True, 2], (1, 2, 3), "ab"):
        with pytest.raises(ValueError):
            pair(bad)
    ints = codec.array_of(codec.exact(int))
    assert ints([1, 2]) == (1, 2)
    with pytest.raises(ValueError):
        ints([1, "2"])
