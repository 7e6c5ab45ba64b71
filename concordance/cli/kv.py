"""``concordance kv get|put|delete|list|watch|txn``: the key-value commands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from concordance import errors
from concordance.cli.common import run_client
from concordance.cli.output import Output, render_value
from concordance.cli.values import InputError, parse_value, read_document
from concordance.client.types import Change, Deleted, Entry

if TYPE_CHECKING:
    from concordance.client.client import Client

__all__ = ["add_commands", "print_change"]

ENTRY_HEADERS = ("KEY", "VERSION", "REVISION", "VALUE")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], flags: argparse.ArgumentParser
) -> None:
    kv = sub.add_parser("kv", help="read and write keys", parents=[flags])
    ops = kv.add_subparsers(required=True, metavar="OP")

    get = ops.add_parser("get", help="one key's entry", parents=[flags])
    get.add_argument("key")
    get.add_argument("--consistent", action="store_true", help="linearizable read")
    get.add_argument("--raw", action="store_true", help="print only the value")
    get.set_defaults(run=run_client, command=_get)

    put = ops.add_parser("put", help="write a key", parents=[flags])
    put.add_argument("key")
    put.add_argument("value", help="JSON or plain text; - reads stdin, @FILE a file")
    put.add_argument("--string", action="store_true", help="store the text as a string as is")
    put.add_argument("--if-version", type=int, help="compare-and-swap (0: only if absent)")
    put.add_argument("--ttl-ms", type=int, help="expire this many ms from now")
    put.set_defaults(run=run_client, command=_put)

    delete = ops.add_parser("delete", help="delete a key, or every key under --prefix",
                            parents=[flags])  # fmt: skip
    delete.add_argument("key", help="a key, or with --prefix a prefix")
    delete.add_argument("--prefix", action="store_true", help="delete every key under KEY")
    delete.add_argument("--if-version", type=int)
    delete.set_defaults(run=run_client, command=_delete)

    lst = ops.add_parser("list", help="the entries under a prefix (all pages)", parents=[flags])
    lst.add_argument("prefix")
    lst.add_argument("--limit", type=int, help="stop after this many entries")
    lst.add_argument("--keys-only", action="store_true")
    lst.add_argument("--raw", action="store_true", help="KEY<TAB>VALUE lines, strings unquoted")
    lst.set_defaults(run=run_client, command=_list)

    watch = ops.add_parser("watch", help="print changes as they happen", parents=[flags])
    watch.add_argument("prefix", nargs="?", help="watch every key under this prefix")
    watch.add_argument("--exact", metavar="KEY", help="watch this one key instead")
    watch.add_argument("--since", type=int, help="replay changes after this revision first")
    watch.set_defaults(run=run_client, command=_watch)

    txn = ops.add_parser(
        "txn", parents=[flags],
        help='an atomic batch: a JSON list of ops or {"ops": [...]} from FILE or - (stdin)',
    )  # fmt: skip
    txn.add_argument("file", nargs="?", default="-", help="FILE, @FILE or - (default: stdin)")
    txn.set_defaults(run=run_client, command=_txn)


async def _get(args: argparse.Namespace, client: Client, out: Output) -> int:
    entry = await client.get(args.key, consistent=args.consistent)
    if args.raw:
        out.line(render_value(entry.value, raw=True))
    else:
        _entries(out, [entry])
    return 0


async def _put(args: argparse.Namespace, client: Client, out: Output) -> int:
    value = parse_value(args.value, as_string=args.string)
    entry = await client.put(args.key, value, args.if_version, args.ttl_ms)
    if out.as_json:
        out.json(entry.to_json())
    else:
        out.line(f"OK {entry.key} version {entry.version} revision {entry.revision}")
    return 0


async def _delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.prefix:
        if args.if_version is not None:
            raise InputError("--if-version does not go with --prefix")
        done = await client.delete_prefix(args.key)
        if out.as_json:
            out.json(done.to_json())
        else:
            out.line(f"deleted {done.deleted} keys (revision {done.revision})")
        return 0
    deleted = await client.delete(args.key, args.if_version)
    _deleted(out, deleted)
    return 0


async def _list(args: argparse.Namespace, client: Client, out: Output) -> int:
    entries = [e async for e in client.list_all(args.prefix, args.limit)]
    if out.as_json:
        out.json({"entries": [e.to_json() for e in entries]})
    elif args.keys_only:
        for e in entries:
            out.line(e.key)
    elif args.raw:
        for e in entries:
            out.line(f"{e.key}\t{render_value(e.value, raw=True)}")
    else:
        _entries(out, entries)
    return 0


async def _watch(args: argparse.Namespace, client: Client, out: Output) -> int:
    if (args.prefix is None) == (args.exact is None):
        raise InputError("kv watch needs a PREFIX or --exact KEY (not both)")
    async with client.watch(args.prefix, key=args.exact, since=args.since) as watch:
        async for change in watch:
            print_change(out, change)
    return 0


async def _txn(args: argparse.Namespace, client: Client, out: Output) -> int:
    doc = read_document(args.file, "the batch")
    ops = doc.get("ops") if isinstance(doc, dict) else doc
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise InputError('the batch must be a JSON list of ops or {"ops": [...]}')
    try:
        result = await client.batch(ops)
    except errors.VersionConflict as e:
        index = e.extra.get("index")
        if index is not None:
            e.message = f"{e.message} (op {index})"
        raise
    if out.as_json:
        out.json(result.to_json())
        return 0
    out.line(f"OK revision {result.revision}")
    rows: list[list[Any]] = []
    for op, item in zip(ops, result.results, strict=True):
        if isinstance(item, Deleted):
            rows.append(["delete", item.key, item.version, ""])
        elif isinstance(item, Entry):
            rows.append([op.get("op"), item.key, item.version, render_value(item.value)])
        else:
            rows.append([op.get("op"), op.get("key"), 0, "(absent)"])
    out.table(("OP", "KEY", "VERSION", "VALUE"), rows)
    return 0


def _entries(out: Output, entries: list[Entry]) -> None:
    if out.as_json:
        for e in entries:
            out.json(e.to_json())
        return
    rows = [[e.key, e.version, e.revision, render_value(e.value)] for e in entries]
    out.table(ENTRY_HEADERS, rows)


def _deleted(out: Output, deleted: Deleted) -> None:
    if out.as_json:
        out.json(deleted.to_json())
    else:
        out.line(f"deleted {deleted.key} (version {deleted.version}, revision {deleted.revision})")


def print_change(out: Output, change: Change) -> None:
    """One change per line (JSON lines with ``--json``): a watch's output is a stream."""
    if out.as_json:
        out.json(change.to_json())
        return
    value = render_value(change.value) if change.type == "set" else ""
    out.line(
        f"{change.revision:>8} {change.type:<6} {change.key} v{change.version} {value}".rstrip()
    )
