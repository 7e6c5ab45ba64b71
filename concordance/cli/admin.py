"""``changes``, ``member``, ``leader``, ``endpoint``, ``snapshot``: the feed and cluster admin."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from concordance.cli.common import run_client
from concordance.cli.kv import print_change
from concordance.cli.output import Output
from concordance.client.types import Member

__all__ = ["add_commands"]

if TYPE_CHECKING:
    from concordance.client.client import Client

    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(sub: Sub, flags: argparse.ArgumentParser) -> None:
    changes = sub.add_parser("changes", help="the change feed under a prefix", parents=[flags])
    changes.add_argument("prefix")
    changes.add_argument("--since", type=int, default=0, help="changes after this revision")
    changes.add_argument("--limit", type=int, default=1000, help="at most this many per answer")
    changes.add_argument("--follow", "-f", action="store_true", help="keep long-polling for more")
    changes.set_defaults(run=run_client, command=_changes)

    member = sub.add_parser("member", help="cluster membership", parents=[flags])
    msub = member.add_subparsers(required=True, metavar="OP")
    mlist = msub.add_parser("list", help="the members and their match index", parents=[flags])
    mlist.set_defaults(run=run_client, command=_member_list)
    madd = msub.add_parser("add", help="add a node (as a learner unless --voter)", parents=[flags])
    madd.add_argument("id")
    madd.add_argument("address", help="HOST:PORT the node serves on")
    madd.add_argument("--voter", action="store_true")
    madd.set_defaults(run=run_client, command=_member_add)
    mremove = msub.add_parser("remove", help="remove a member", parents=[flags])
    mremove.add_argument("id")
    mremove.set_defaults(run=run_client, command=_member_remove)
    mpromote = msub.add_parser("promote", help="make a learner a voter", parents=[flags])
    mpromote.add_argument("id")
    mpromote.set_defaults(run=run_client, command=_member_promote)

    leader = sub.add_parser("leader", help="leadership", parents=[flags])
    lsub = leader.add_subparsers(required=True, metavar="OP")
    transfer = lsub.add_parser("transfer", help="hand leadership over", parents=[flags])
    transfer.add_argument("to", nargs="?", help="node id (default: the best follower)")
    transfer.set_defaults(run=run_client, command=_leader_transfer)

    endpoint = sub.add_parser("endpoint", help="every endpoint's view", parents=[flags])
    esub = endpoint.add_subparsers(required=True, metavar="OP")
    estatus = esub.add_parser("status", help="role, term, leader, indexes", parents=[flags])
    estatus.set_defaults(run=run_client, command=_endpoint_status)
    ehealth = esub.add_parser("health", help="/healthz and /readyz", parents=[flags])
    ehealth.set_defaults(run=run_client, command=_endpoint_health)

    snapshot = sub.add_parser("snapshot", help="backups and Raft snapshots", parents=[flags])
    ssub = snapshot.add_subparsers(required=True, metavar="OP")
    save = ssub.add_parser(
        "save", help="back up the full state to FILE (restore it with `concordance restore`)",
        parents=[flags],
    )  # fmt: skip
    save.add_argument("file")
    save.set_defaults(run=run_client, command=_snapshot_save)
    take = ssub.add_parser("take", help="take a Raft snapshot on a node now", parents=[flags])
    take.set_defaults(run=run_client, command=_snapshot_take)


async def _changes(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.follow:
        async for change in client.feed(args.prefix, args.since, limit=args.limit):
            print_change(out, change)
        return 0
    page = await client.changes(args.prefix, args.since, args.limit)
    if out.as_json:
        out.json(page.to_json())
        return 0
    for change in page.changes:
        print_change(out, change)
    out.line(f"(complete up to revision {page.revision})")
    return 0


def _members(out: Output, members: list[Member]) -> None:
    if out.as_json:
        out.json({"members": [m.to_json() for m in members]})
        return
    rows = [[m.id, m.address, "voter" if m.voter else "learner", m.match_index] for m in members]
    out.table(("ID", "ADDRESS", "KIND", "MATCH"), rows)


async def _member_list(args: argparse.Namespace, client: Client, out: Output) -> int:
    _members(out, await client.members())
    return 0


async def _member_add(args: argparse.Namespace, client: Client, out: Output) -> int:
    _members(out, await client.add_member(args.id, args.address, voter=args.voter))
    return 0


async def _member_remove(args: argparse.Namespace, client: Client, out: Output) -> int:
    _members(out, await client.remove_member(args.id))
    return 0


async def _member_promote(args: argparse.Namespace, client: Client, out: Output) -> int:
    _members(out, await client.promote_member(args.id))
    return 0


async def _leader_transfer(args: argparse.Namespace, client: Client, out: Output) -> int:
    await client.transfer_leader(args.to)
    status = await client.status()
    if out.as_json:
        out.json({"leaderId": status.leader_id, "term": status.term})
    else:
        out.line(f"leader is now {status.leader_id} (term {status.term})")
    return 0


async def _endpoint_status(args: argparse.Namespace, client: Client, out: Output) -> int:
    """One row per endpoint; an endpoint that does not answer is a row with its error, and
    the exit code is 6 when any endpoint did not answer."""
    rows: list[list[Any]] = []
    docs: list[dict[str, Any]] = []
    failed = False
    for url in client.endpoints:
        try:
            st = await client.status(url)
        except Exception as e:  # the row says why; other endpoints still get asked
            failed = True
            reason = getattr(e, "message", None) or str(e)
            rows.append([url, "-", "-", "-", "-", "-", "-", f"error: {reason}"])
            docs.append({"endpoint": url, "error": reason})
            continue
        down = [name for name, r in st.roles.items() if not r.up]
        state = f"roles down: {','.join(down)}" if down else "ok"
        rows.append([url, st.node_id, st.role, st.term, st.leader_id, st.commit_index,
                     st.applied_index, state])  # fmt: skip
        docs.append({"endpoint": url, **st.to_json()})
    if out.as_json:
        out.json(docs)
    else:
        out.table(("ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "STATE"), rows)
    return 6 if failed else 0


async def _endpoint_health(args: argparse.Namespace, client: Client, out: Output) -> int:
    health = await client.health()
    if out.as_json:
        out.json([h.to_json() for h in health])
    else:
        rows = [[h.endpoint, "yes" if h.healthy else "no", "yes" if h.ready else "no",
                 h.error or ""] for h in health]  # fmt: skip
        out.table(("ENDPOINT", "HEALTHY", "READY", "ERROR"), rows)
    return 0 if all(h.ready for h in health) else 6


async def _snapshot_save(args: argparse.Namespace, client: Client, out: Output) -> int:
    size = await client.backup(Path(args.file))
    if out.as_json:
        out.json({"file": args.file, "bytes": size})
    else:
        out.line(f"saved {size} bytes to {args.file}")
    return 0


async def _snapshot_take(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = await client.snapshot()
    if out.as_json:
        out.json(info.to_json())
    else:
        out.line(f"snapshot at index {info.index} (term {info.term}, {info.bytes} bytes)")
    return 0
