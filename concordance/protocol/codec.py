"""The codec engine under every msgpack format: frozen dataclass <-> arrays or maps.

``wire`` (IPC envelopes, maps by field name), ``wire_raft`` (peer frames,
positional arrays) and ``commands`` (log entry data, tagged arrays) each
declare their types and per-field validators; this module turns a class
plus validators into a :class:`Record` once, at import, and runs it.

Rules / theory of operation:

- This is the hot path of every write, so all per-type work happens in
  :func:`record`: the field order, defaults, validators and three small
  functions compiled for the class (tuple of fields, map of fields,
  constructor). Nothing per call looks at type hints or builds a spec.
- The constructor of a frozen slots dataclass without ``__post_init__`` sets
  the slots directly instead of going through ``__init__`` and
  ``object.__setattr__`` per field (about twice as fast); every field is always
  passed, so the result is the same object ``__init__`` would build.
- A validator takes a decoded value and returns the field value or raises
  ``ValueError`` (:func:`fail`); the format's entry point catches
  ``DECODE_ERRORS`` and raises ``RemoteProtocolError`` chained to the cause,
  so hostile bytes never escape as anything else.
- Packing reuses one ``msgpack.Packer`` per thread and format (building a
  Packer per call was half the cost of a small message); nested records are
  converted by the packer's ``default`` hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]

__all__ = [
    "DECODE_ERRORS",
    "Check",
    "Record",
    "array",
    "array_of",
    "decode_array",
    "decode_map",
    "exact",
    "fail",
    "fixed_array",
    "maker",
    "optional",
    "packer",
    "record",
    "str_map",
    "uint",
]

Check = Callable[[Any], Any]

# Everything decoding hostile bytes may raise; msgpack's own errors are
# ValueError subclasses or UnpackException.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    msgpack.UnpackException,
)


def fail(what: str, value: Any) -> NoReturn:
    """Reject a decoded value (the entry point turns this into RemoteProtocolError)."""
    raise ValueError(f"expected {what}, got {type(value).__name__} {value!r:.60}")


# -- validators -----------------------------------------------------------------

_EXACT: dict[type, Check] = {}


def exact(cls: type) -> Check:
    """A validator accepting exactly ``cls`` (so a bool is not an int)."""
    check = _EXACT.get(cls)
    if check is None:

        def check(v: Any) -> Any:
            if type(v) is cls:
                return v
            fail(cls.__name__, v)

        check.exact_type = cls  # type: ignore[attr-defined]  # lets array_of skip the calls
        _EXACT[cls] = check
    return check


def uint(v: Any) -> int:
    if type(v) is int and v >= 0:
        return v
    fail("a non-negative int", v)


uint.exact_type = int  # type: ignore[attr-defined]
uint.non_negative = True  # type: ignore[attr-defined]


def array(v: Any) -> list[Any] | tuple[Any, ...]:
    if type(v) is list or type(v) is tuple:
        return v
    fail("an array", v)


def str_map(v: Any) -> dict[str, Any]:
    if type(v) is dict:
        for k in v:  # a plain loop beats all() and set(map(type, ...)) on small maps
            if type(k) is not str:
                break
        else:
            return v
    fail("a map with str keys", v)


def optional(check: Check) -> Check:
    """``check`` or None."""
    return lambda v: None if v is None else check(v)


def array_of(item: Check) -> Check:
    """An array of ``item`` as a tuple (arrays of one exact scalar type skip the calls)."""
    kind = getattr(item, "exact_type", None)
    if kind is not None:
        ok = {kind}

        def check_kind(v: Any) -> tuple[Any, ...]:
            items = array(v)
            if set(map(type, items)) <= ok:
                return tuple(items)
            return tuple([item(x) for x in items])  # raises on the culprit

        return check_kind
    return lambda v: tuple([item(x) for x in array(v)])


def fixed_array(items: Sequence[Check]) -> Check:
    """An array of exactly ``len(items)`` values, each checked, as a tuple."""
    n = len(items)
    kinds = tuple(getattr(c, "exact_type", None) for c in items)
    typed = tuple((i, k) for i, k in enumerate(kinds) if k is not None)
    others = tuple((i, c) for i, (c, k) in enumerate(zip(items, kinds, strict=True)) if k is None)
    others = tuple((i, c) for i, c in others if c is not any_value)
    shape = f"an array of {n}"
    if None not in kinds:  # all exact scalars: compare the type tuple in one go

        def check_kinds(v: Any) -> tuple[Any, ...]:
            if (type(v) is list or type(v) is tuple) and tuple(map(type, v)) == kinds:
                return tuple(v)
            fail(shape, v)

        return check_kinds

    def check_each(v: Any) -> tuple[Any, ...]:
        if (type(v) is list or type(v) is tuple) and len(v) == n:
            for i, k in typed:
                if type(v[i]) is not k:
                    fail(f"{k.__name__} at [{i}]", v[i])
            if not others:
                return tuple(v)
            out = list(v)
            for i, c in others:
                out[i] = c(v[i])
            return tuple(out)
        fail(shape, v)

    return check_each


def any_value(v: Any) -> Any:
    return v


# -- records --------------------------------------------------------------------


def _compile(name: str, src: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    exec(src, namespace)  # the source is built from dataclass field names only
    return namespace[name]  # type: ignore[no-any-return]


def maker(cls: type) -> Callable[..., Any]:
    """A positional constructor taking every field of dataclass ``cls``, in order."""
    names = [f.name for f in fields(cls)]
    params = getattr(cls, "__dataclass_params__", None)
    if (
        hasattr(cls, "__post_init__")
        or "__slots__" not in cls.__dict__
        or params is None
        or not params.frozen
        or "__init__" not in cls.__dict__
    ):
        return cls
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    # Positional names of our own, so no field name can shadow a local.
    lines = [f"def make({', '.join(f'_a{i}' for i in range(len(names)))}):", "    _o = _new(_cls)"]
    for i, name in enumerate(names):
        namespace[f"_s{i}"] = cls.__dict__[name].__set__  # the slot's own descriptor
        lines.append(f"    _s{i}(_o, _a{i})")
    lines.append("    return _o")
    return _compile("make", "\n".join(lines), namespace)


@dataclass(frozen=True, slots=True)
class Record:
    """Everything the engine needs about one dataclass, computed once."""

    cls: type
    names: tuple[str, ...]
    checks: tuple[Check, ...]
    pairs: tuple[tuple[str, Check], ...]
    name_set: frozenset[str]
    required: int  # leading fields without a default
    defaults: tuple[Any, ...]  # of the fields after ``required``
    make: Callable[..., Any]  # every field, positionally
    from_tuple: Callable[[Sequence[Any]], Any]  # every field, after the tag if any
    from_map: Callable[[dict[str, Any]], Any]  # every field by name (KeyError if absent)
    to_tuple: Callable[[Any], tuple[Any, ...]]  # ``(tag?, *fields)``
    to_map: Callable[[Any], dict[str, Any]]  # ``{name: field}``


def record(cls: type, checks: Sequence[Check], *, tag: int | None = None) -> Record:
    """The record of dataclass ``cls``: one validator per field in field order.

    ``tag`` goes first in ``to_tuple`` and is skipped by ``from_tuple``. Nested
    values are left as they are: the format's packer ``default`` hook converts them.
    """
    dc_fields = fields(cls)
    if len(checks) != len(dc_fields):
        raise TypeError(f"codec: {cls.__name__} has {len(dc_fields)} fields, got {len(checks)}")
    names = tuple(f.name for f in dc_fields)
    defaults: list[Any] = []
    required = len(names)
    for i, f in enumerate(dc_fields):
        if f.default is not MISSING:
            defaults.append(f.default)
        elif f.default_factory is not MISSING:
            raise TypeError(f"codec: {cls.__name__}.{f.name}: default_factory is not supported")
        else:
            if defaults:
                raise TypeError(f"codec: {cls.__name__}.{f.name} follows a field with a default")
            continue
        required = min(required, i)
    namespace: dict[str, Any] = {}
    values = [f"o.{name}" for name in names]
    parts = ([] if tag is None else [repr(tag)]) + values
    as_tuple = f"({', '.join(parts)},)" if parts else "()"
    to_tuple = _compile("f", f"def f(o): return {as_tuple}", namespace)
    items = ", ".join(f"{name!r}: {value}" for name, value in zip(names, values, strict=True))
    to_map = _compile("g", f"def g(o): return {{{items}}}", namespace)
    namespace["_make"] = make = maker(cls)
    start = 0 if tag is None else 1
    by_pos = [_checked(i, c, f"a[{start + i}]", namespace) for i, c in enumerate(checks)]
    from_tuple = _compile("d", f"def d(a): return _make({', '.join(by_pos)})", namespace)
    by_name = [
        _checked(i, c, f"m[{n!r}]", namespace)
        for i, (n, c) in enumerate(zip(names, checks, strict=True))
    ]
    from_map = _compile("e", f"def e(m): return _make({', '.join(by_name)})", namespace)
    return Record(
        cls=cls,
        names=names,
        checks=tuple(checks),
        pairs=tuple(zip(names, checks, strict=True)),
        name_set=frozenset(names),
        required=required,
        defaults=tuple(defaults),
        make=make,
        from_tuple=from_tuple,
        from_map=from_map,
        to_tuple=to_tuple,
        to_map=to_map,
    )


def _checked(i: int, check: Check, src: str, namespace: dict[str, Any]) -> str:
    """Source of one validated field: exact-type checks inline, the call only on failure."""
    if check is any_value:
        return src
    namespace[f"_c{i}"] = check
    kind = getattr(check, "exact_type", None)
    if kind is None:
        return f"_c{i}({src})"
    namespace[f"_t{i}"] = kind
    test = f"type(_v{i} := {src}) is _t{i}"
    if getattr(check, "non_negative", False):
        test += f" and _v{i} >= 0"
    return f"(_v{i} if {test} else _c{i}(_v{i}))"


def decode_array(rec: Record, items: Sequence[Any]) -> Any:
    """An instance from positional values; trailing fields with a default may be missing.

    The slow path of ``rec.from_tuple``, which wants every field.
    """
    n = len(items)
    checks = rec.checks
    if not rec.required <= n <= len(checks):
        raise ValueError(f"{rec.cls.__name__} has {n} fields, expected {len(checks)}")
    args = [check(v) for check, v in zip(checks, items, strict=False)]
    args.extend(rec.defaults[n - rec.required :])
    return rec.make(*args)


def decode_map(rec: Record, value: Any) -> Any:
    """An instance from a map by field name: unknown keys and missing required fields fail."""
    if type(value) is not dict:
        fail(f"a map for {rec.cls.__name__}", value)
    if len(value) == len(rec.names):
        # Same size and every name present means no unknown key: no set to build.
        try:
            return rec.from_map(value)
        except KeyError:
            pass  # a key is missing, so another is unknown: report it below
    unknown = value.keys() - rec.name_set
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(map(str, unknown))} in {rec.cls.__name__}")
    args = []
    for i, (name, check) in enumerate(rec.pairs):
        if name in value:
            args.append(check(value[name]))
        elif i < rec.required:
            raise ValueError(f"missing field {name!r} in {rec.cls.__name__}")
        else:
            args.append(rec.defaults[i - rec.required])
    return rec.make(*args)


# -- packing ----------------------------------------------------------------------


def packer(default: Callable[[Any], Any] | None = None) -> Callable[[Any], bytes]:
    """``packb(obj, use_bin_type=True, default=default)`` reusing a Packer per thread.

    A Packer is not reentrant and ``default`` runs Python code (where another
    thread may run), hence one per thread rather than one per process.
    """
    local = threading.local()

    def pack(obj: Any) -> bytes:
        try:
            p = local.packer
        except AttributeError:
            p = local.packer = msgpack.Packer(use_bin_type=True, default=default)
        return p.pack(obj)  # type: ignore[no-any-return]

    return pack
