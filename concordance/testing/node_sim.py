"""A deterministic simulation of whole nodes: every real role of a 3- or 5-node cluster,
one process, one seed.

Why: ``sim.py`` checks the pure Raft core under a toy driver. The bugs that
hurt are often between the roles (a lost ``hello``, a snapshot request that
goes nowhere, a result published to a front that restarted), which only
show when the real consensus driver, the real storage service with its
SQLite files and the real front service layer run together, while roles
crash and restart and the network misbehaves. Running them all on one
simulated loop (``sim_loop``: time jumps to the next timer) makes that fast
and repeatable: one seed is one schedule, and a failing seed replays exactly.

One run (:class:`NodeSimulation`):

* a cluster of ``nodes`` members plus one spare node, started empty when the
  workload first adds it to the membership (it removes it again, and so on);
  small ``snapshot_every`` and ``snapshot_trailing`` so that compaction happens
  in every run and snapshot files in many; a short ``request_timeout_ms``;
* clients write (set, CAS, delete), read (consistent and local) and set
  keys with a TTL, through any live node's front (``KvService``), and read
  some acknowledged writes back at once on the node that answered; watchers
  follow a prefix through the fronts' ``WatchHub`` and resubscribe from
  their last revision when their front goes away, as a real client does; a
  change-feed reader long-polls ``changes`` from the last revision it read;
* messages between roles take 0-20 ms each (in order on each socket, so
  that different sockets' messages overtake each other: ``_ipc_latency``);
* a nemesis partitions the network, drops, delays and reorders frames, stops roles
  cleanly (their planned stop) or kills them (a crash), and restarts them;
* then the faults stop, every role of every started node is (re)started, and
  the run waits for the members to converge.

Checked after every run (:class:`SimFailure` names the property):

* linearizability of every set/CAS/delete and consistent read, final reads
  included (``linearizability.check``);
* no acknowledged write lost: each key's final version is at least the
  highest version a write of it was acknowledged with;
* every watcher saw each change of its prefix once, in revision order, with
  no gap, across its resubscriptions (against the converged change log);
* all members converged: same applied index and same ``state.db`` digest;
  every TTL key was reaped; no role died on its own;
* atomic batches are atomic to readers: a list of the batch keys (consistent
  or local) that shows one key as written by a batch shows every other key
  of that batch at that revision or later (``torn_batches``);
* read your writes on a node: a local read shows at least the version of
  every write its node answered before the read began, whatever restarted
  in between (``stale_local_reads``).

``trace_hash`` fingerprints the history, the watch streams and the final
state: two runs of one seed must give the same one (a test checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from concordance.config import NodeConfig, Secrets
from concordance.consensus import ConsensusDriver
from concordance.errors import ConcordanceError
from concordance.front import writes
from concordance.front.validate import DeleteArgs, SetArgs
from concordance.raft.entries import Membership
from concordance.raft.ready import Role
from concordance.storage import service_ttl
from concordance.storage.service import ServiceTimings
from concordance.storage.service_ttl import ReaperTimings
from concordance.testing import linearizability as lin
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.node_sim_checks import (
    LocalRead,
    NodeAck,
    Sink,
    Watcher,
    lost_writes,
    stale_local_reads,
    torn_batches,
    unreaped,
    watch_gaps,
)
from concordance.testing.sim_loop import EPOCH_MS, SimLoop
from concordance.testing.sim_net import SimNetwork
from concordance.testing.sim_node import ROLES, SimNode, released_on_crash

__all__ = ["NodeSimOptions", "NodeSimulation", "SimFailure", "run_seed"]

CLIENT_TIMEOUT = 3.0  # seconds a client waits for an answer (then: unknown outcome)
CONVERGE_WITHIN = 60.0  # simulated seconds the calm end has to converge
TENANT = "tenant:sim/"
KEYS = tuple(f"{TENANT}k{i}" for i in range(4))
TTL_PREFIX = f"{TENANT}ttl/"
TTL_MAX = 0.8  # seconds: the longest TTL a client sets
TTL_KEYS = (f"{TTL_PREFIX}a", f"{TTL_PREFIX}b")
WATCH_PREFIX = f"{TENANT}k"
BATCH_PREFIX = f"{TENANT}kb/"
BATCH_KEYS = tuple(f"{BATCH_PREFIX}{i}" for i in range(3))  # watched, not in the history
FEED_PAGE = 50  # changes a feed reader asks for at once
READ_BACK = 0.5  # share of acknowledged sets and CAS read back at once on their node
CRASH_AFTER_ACK = 0.03  # share of them after which their node's storage crashes first
WATCH_PAGE = 4  # the fronts' replay page: small, so atomic batches land on its edges


def _ipc_latency(rng: random.Random) -> Callable[[], float]:
    """How long one message between roles takes: mostly nothing or a millisecond or two,
    now and then a stalled process's 20 ms, so that messages of different sockets (a
    read held for a new storage, consensus's resend to it) arrive in every order."""

    def latency() -> float:
        roll = rng.random()
        if roll < 0.5:
            return 0.0
        return rng.uniform(0.0, 0.002) if roll < 0.95 else rng.uniform(0.002, 0.02)

    return latency


class SimFailure(AssertionError):
    """A property did not hold; the message says which, and how to replay."""


@dataclass(frozen=True)
class NodeSimOptions:
    """The shape of one run."""

    nodes: int = 3
    seconds: float = 3.0  # simulated seconds of workload and faults
    clients: int = 5
    watchers: int = 2
    feeds: int = 1  # change-feed readers (long-polls of ``changes``)
    spare: bool = True  # a node the workload adds to and removes from the membership
    faults: bool = True


class NodeSimulation:
    """One seeded run (see the module docstring). ``run()`` raises :class:`SimFailure`."""

    def __init__(self, seed: int, options: NodeSimOptions | None = None) -> None:
        self.seed = seed
        self.opts = options or NodeSimOptions(nodes=3 if seed % 2 == 0 else 5)
        self.rng = random.Random(seed)
        self.history: list[lin.Operation] = []
        self.watchers: list[Watcher] = []
        self.nodes: dict[str, SimNode] = {}
        self.net = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.trace_hash = ""
        self.stats: dict[str, int] = {}
        self._acked: dict[str, int] = {}  # key -> highest acknowledged written version
        self._batches: dict[tuple[int, int], frozenset[str]] = {}  # (client, n) -> its keys
        self._torn: list[str] = []  # lists that showed part of a batch
        self._local_reads: list[LocalRead] = []
        self._node_acks: list[NodeAck] = []  # sets and CAS answered 200, by node
        self._deletes: dict[str, int] = {}  # key -> the step its first delete was sent at
        # One order of the clients' steps (sends and answers): simulated time stands still
        # between a write's answer and the read that follows it, this does not.
        self._steps = itertools.count()
        self._restarts: list[asyncio.Task[None]] = []
        self._end = 0.0
        self._spare: str | None = None

    # -- running --------------------------------------------------------------
    def run(self) -> None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        root = tempfile.mkdtemp(prefix="ccsim-", dir=base)
        loop = SimLoop()
        try:
            ids = random.Random(self.rng.getrandbits(64))
            with _deterministic_ids(ids), _quiet(), released_on_crash():
                loop.run_until_complete(self._main(root))
        finally:
            _close_loop(loop)
            shutil.rmtree(root, ignore_errors=True)

    async def _main(self, root: str) -> None:
        ipc = MemoryIpc(latency=_ipc_latency(random.Random(self.rng.getrandbits(64))))
        members = [f"n{i}" for i in range(1, self.opts.nodes + 1)]
        peers = {m: f"10.0.0.{i}:4100" for i, m in enumerate(members, 1)}
        ids = list(members)
        if self.opts.spare:
            self._spare = f"n{self.opts.nodes + 1}"
            ids.append(self._spare)
        timings = ServiceTimings(reconnect_poll=0.2, reaper=ReaperTimings(interval=0.2))
        for node_id in ids:
            data = Path(root) / node_id
            data.mkdir()
            cfg = _config(node_id, str(data), peers, spare=node_id == self._spare)
            rng = random.Random(self.rng.getrandbits(64))
            self.nodes[node_id] = SimNode(cfg, ipc, self.net, rng, timings)
        for node in self.nodes.values():
            if node.node_id != self._spare:  # the spare starts when it is first added
                await node.start(("storage", "consensus", "front"))
        loop = asyncio.get_running_loop()
        self._end = loop.time() + self.opts.seconds
        jobs = [loop.create_task(self._client(c)) for c in range(self.opts.clients)]
        jobs += [loop.create_task(self._watch(w)) for w in range(self.opts.watchers)]
        jobs += [loop.create_task(self._read_feed(100 + f)) for f in range(self.opts.feeds)]
        if self.opts.faults:
            jobs.append(loop.create_task(self._nemesis()))
        await asyncio.gather(*jobs)
        await asyncio.gather(*self._restarts)
        await self._calm()
        self._tally()
        try:
            self._check()
        finally:
            for node in self.nodes.values():
                await node.close()

    # -- the workload ---------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _live_fronts(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.kv is not None]

    async def _request(self, node: SimNode, make: Callable[[], Any]) -> tuple[int | None, Any]:
        """One client request to ``node``'s front: (HTTP-like status, answer); status None
        when no answer came (timeout, or the front died with the request)."""
        run = node.front_run()
        if run is None:
            return 503, None  # connection refused: certainly not applied
        task = run.spawn(make(), name="client request")
        done, _ = await asyncio.wait([task], timeout=CLIENT_TIMEOUT)
        if not done:
            task.cancel()
            return None, None
        if task.cancelled():
            return None, None
        error = task.exception()
        if error is None:
            return 200, task.result()
        if isinstance(error, ConcordanceError):
            return error.http_status, {"error": error.to_dict()}
        return None, None  # a 500: outcome unknown

    async def _client(self, cid: int) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        seen: dict[str, int] = {}
        counter = itertools.count()
        while self._now() < self._end:
            await asyncio.sleep(rng.uniform(0.01, 0.08))
            fronts = self._live_fronts()
            if not fronts:
                continue
            node = rng.choice(fronts)
            kv = node.kv
            assert kv is not None
            roll = rng.random()
            key = rng.choice(KEYS)
            call = self._now()
            if roll < 0.08:
                await self._ttl_write(node, rng)
                continue
            if roll < 0.16:
                await self._local_read(node, key)
                continue
            if 0.41 <= roll < 0.45:  # a list of the batch keys: a batch shows whole or not
                consistent = rng.random() < 0.5
                list_batch = partial(kv.list, BATCH_PREFIX, 10, None, consistent=consistent)
                status, body = await self._request(node, list_batch)
                if status == 200:
                    self._torn.extend(torn_batches(self._batches, body["entries"]))
                    shown = sum(1 for e in body["entries"] if isinstance(e["value"], dict))
                    self.stats["lists of batches"] = self.stats.get("lists of batches", 0) + (
                        shown > 1
                    )
                continue
            if roll < 0.45:
                status, body = await self._request(node, partial(kv.get, key, consistent=True))
                self._record(cid, key, "get", None, call, status, body)
                continue
            if 0.82 <= roll < 0.85:  # an atomic batch: one revision of 2-3 events
                keys = rng.sample(BATCH_KEYS, rng.randint(2, 3))
                n = next(counter)
                self._batches[(cid, n)] = frozenset(keys)
                text = json.dumps({"c": cid, "n": n}).encode()
                ops = [SetArgs(k, text, None, None) for k in keys]
                await self._request(node, partial(kv.batch, ops))
                continue
            if roll < 0.85:
                value = {"c": cid, "n": next(counter)}
                cas = roll >= 0.7
                if_version = seen.get(key, 0) if cas else None
                args = SetArgs(key, json.dumps(value).encode(), if_version, None)
                status, body = await self._request(node, partial(kv.set, args))
                kind: lin.Kind = "cas" if cas else "set"
                op = self._record(cid, key, kind, lin.Write(value, if_version), call, status, body)
            else:
                if_version = seen.get(key) if roll > 0.95 else None
                self._deletes.setdefault(key, next(self._steps))
                d = DeleteArgs(key, if_version)
                status, body = await self._request(node, partial(kv.delete, d))
                op = self._record(cid, key, "delete", if_version, call, status, body)
            if op.status == "ok" and isinstance(op.output, (lin.Written, lin.Deleted)):
                seen[key] = op.output.version
                if op.kind != "delete":
                    self._acked[key] = max(self._acked.get(key, 0), op.output.version)
                    ack = NodeAck(node.node_id, key, op.output.version, next(self._steps))
                    self._node_acks.append(ack)
                    if rng.random() < CRASH_AFTER_ACK:
                        down, with_front = rng.uniform(0.0, 0.05), rng.random() < 0.4
                        await self._crash_storage_then_read(node, key, down, with_front=with_front)
                    elif rng.random() < READ_BACK and node.kv is not None:
                        await self._local_read(node, key)  # read your write, there

    async def _local_read(self, node: SimNode, key: str) -> None:
        """A local read through ``node``'s front: not linearizable, so not in the history;
        checked against the writes that node answered before it (``stale_local_reads``)."""
        kv, call = node.kv, next(self._steps)
        assert kv is not None
        status, body = await self._request(node, partial(kv.get, key))
        if status == 200:
            version = body["version"] if body is not None else None
            self._local_reads.append(LocalRead(node.node_id, key, call, next(self._steps), version))

    def _record(
        self,
        cid: int,
        key: str,
        kind: lin.Kind,
        input: lin.Write | int | None,
        call: float,
        status: int | None,
        body: Any,
    ) -> lin.Operation:
        if status == 200 and kind == "get" and body is None:
            status = 404  # the service answers None where HTTP answers 404
        if status == 404 and kind != "get" and kind != "delete":
            status = None
        ret = self._now() if status is not None else None
        op = lin.from_http(cid, key, kind, input, call, ret, status, body)
        self.history.append(op)
        return op

    async def _ttl_write(self, node: SimNode, rng: random.Random) -> None:
        kv = node.kv
        assert kv is not None
        expires = EPOCH_MS + int((self._now() + rng.uniform(0.1, TTL_MAX)) * 1000)
        args = SetArgs(rng.choice(TTL_KEYS), b"1", None, expires)
        await self._request(node, partial(kv.set, args))

    async def _watch(self, wid: int) -> None:
        w = Watcher(wid, WATCH_PREFIX)
        self.watchers.append(w)
        rng = random.Random(self.rng.getrandbits(64))
        while self._now() < self._end and w.ended is None:
            fronts = [n for n in self._live_fronts() if n.hub is not None]
            if not fronts:
                await asyncio.sleep(0.1)
                continue
            node = rng.choice(fronts)
            # a client also moves to another node now and then, resuming where it was
            await self._follow(node, w, self._now() + rng.uniform(0.2, 1.5))
            await asyncio.sleep(rng.uniform(0.01, 0.2))

    async def _read_feed(self, fid: int) -> None:
        """A change-feed reader: long-polls ``changes`` of the prefix on any node from the
        last revision it has read (the page's revision when the page was complete)."""
        w = Watcher(fid, WATCH_PREFIX, start=0)
        self.watchers.append(w)
        sink = Sink(w)  # the same order checks as a subscription's events
        rng = random.Random(self.rng.getrandbits(64))
        while self._now() < self._end and w.ended is None:
            fronts = self._live_fronts()
            if not fronts:
                await asyncio.sleep(0.1)
                continue
            node = rng.choice(fronts)
            kv = node.kv
            assert kv is not None
            wait_ms = rng.choice((0, 300))
            read = partial(kv.changes, WATCH_PREFIX, w.cursor, FEED_PAGE, wait_ms)
            status, body = await self._request(node, read)
            if status == 200:
                sink.notify(fid, body["changes"], None)
                if len(body["changes"]) < FEED_PAGE:
                    w.cursor = max(w.cursor, int(body["revision"]))
            elif status == 410:
                w.ended = "compacted"
            await asyncio.sleep(rng.uniform(0.01, 0.1))

    async def _follow(self, node: SimNode, w: Watcher, leave_at: float) -> None:
        """One subscription, until its front goes, it is cancelled, or ``leave_at``."""
        hub, run = node.hub, node.front_run()
        if hub is None or run is None:
            return
        sink = Sink(w)
        since = None if w.start is None else w.cursor
        hub.page = WATCH_PAGE
        task = run.spawn(
            hub.subscribe(sink, prefix=WATCH_PREFIX, key=None, since=since), name="client watch"
        )
        done, _ = await asyncio.wait([task], timeout=CLIENT_TIMEOUT)
        if not done or task.cancelled() or task.exception() is not None:
            task.cancel()
            return
        sub, revision = task.result()
        if w.start is None:
            w.start = w.cursor = revision
        sub.start()
        end = min(self._end, leave_at)
        while node.front_run() is run and sink.cancelled_reason is None and self._now() < end:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await sink.woken.wait()
        sink.closed = True
        if sink.cancelled_reason == "compacted":
            w.ended = "compacted"
        if not sub.ended:
            hub.unsubscribe(sub)

    # -- faults ---------------------------------------------------------------
    async def _nemesis(self) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        net = self.net
        ids = list(self.nodes)
        while self._now() < self._end:
            await asyncio.sleep(rng.uniform(0.05, 0.45))
            roll = rng.random()
            if roll < 0.45:
                node = self.nodes[rng.choice(ids)]
                role = rng.choice(ROLES)
                clean = rng.random() < 0.5
                down = rng.uniform(0.0, 1.0)
                self._restarts.append(asyncio.create_task(self._bounce(node, role, clean, down)))
            elif roll < 0.6:
                shuffled = rng.sample(ids, len(ids))
                cut = rng.randint(1, len(ids) - 1)
                net.partition([shuffled[:cut]])
            elif roll < 0.7:
                net.heal()
            elif roll < 0.8:
                net.drop = rng.choice((0.0, 0.05, 0.3))
                net.reorder = rng.choice((0.0, 0.2, 0.5))
                net.delay = rng.choice(((0.001, 0.005), (0.001, 0.005), (0.01, 0.3)))
            elif self._spare is not None:
                await self._change_membership(rng)

    async def _bounce(self, node: SimNode, role: str, clean: bool, down: float) -> None:
        if not node.roles:
            return  # the spare, not started yet
        await node.stop(role, clean=clean)
        self._count(f"{'stop' if clean else 'kill'} {role}")
        await asyncio.sleep(down)
        await node.start((role,))

    async def _crash_storage_then_read(
        self, node: SimNode, key: str, down: float, *, with_front: bool
    ) -> None:
        """The window the front's read floor closes (PROTOCOL.md §3.8): storage crashes
        right after its node answered a write (before its lazy COMMIT took the write), and
        a local read on that node follows at once, held until a new storage answers.
        ``with_front``: the front crashes too, and the read goes to its successor as soon
        as it serves (whose read floor starts at 0: storage's applied mark holds it)."""
        if not node.up("storage") or node.kv is None:
            return
        roles = ("storage", "front") if with_front else ("storage",)
        for role in roles:
            await node.stop(role, clean=False)
        self._count(f"kill {' and '.join(roles)} after an answer")

        async def restart() -> None:
            await asyncio.sleep(down)
            await node.start(roles)

        self._restarts.append(asyncio.create_task(restart()))
        for _ in range(100):  # a client reconnecting to the node's port
            if node.kv is not None:
                await self._local_read(node, key)
                return
            await asyncio.sleep(0.005)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def _change_membership(self, rng: random.Random) -> None:
        assert self._spare is not None
        fronts = [n for n in self._live_fronts() if n.node_id != self._spare]
        if not fronts:
            return
        node = rng.choice(fronts)
        members = self._membership()
        spare = self.nodes[self._spare]
        op = "remove" if members is not None and self._spare in members.members else "add_voter"
        if op == "add_voter" and not spare.roles:
            await spare.start(("storage", "consensus", "front"))
        run, clients = node.front_run(), node.clients
        if run is None or clients is None:
            return
        consensus = clients.consensus
        task = run.spawn(
            consensus.conf_change(op, self._spare, spare.cfg.listen, 2.0), name="client"
        )
        await asyncio.wait([task], timeout=CLIENT_TIMEOUT)
        if task.done() and not task.cancelled() and task.exception() is None:
            self.stats[op] = self.stats.get(op, 0) + 1
        else:
            task.cancel()

    def _leader(self) -> ConsensusDriver | None:
        """The running leader of the highest term (a deposed one may not know it yet)."""
        leaders = [
            n.driver
            for n in self.nodes.values()
            if n.driver is not None and n.driver.core.role is Role.LEADER
        ]
        return max(leaders, key=lambda d: d.core.term) if leaders else None

    def _membership(self) -> Membership | None:
        leader = self._leader()
        return leader.core.membership if leader is not None else None

    # -- the calm end ---------------------------------------------------------
    async def _calm(self) -> None:
        self.net.calm()
        for node in self.nodes.values():
            if node.roles:  # every node but a spare never added
                await node.start()
        limit = self._now() + CONVERGE_WITHIN
        while self._now() < limit:
            if self._converged():
                break
            await asyncio.sleep(0.05)
        for key in KEYS:  # final consistent reads: part of the history
            for _ in range(20):
                node = self.rng.choice(self._live_fronts())
                kv = node.kv
                assert kv is not None
                call = self._now()
                status, body = await self._request(node, partial(kv.get, key, consistent=True))
                if status in (200,):
                    self._record(-1, key, "get", None, call, status, body)
                    break
        # past every TTL, then converged again: the reaper must have deleted each one
        await asyncio.sleep(TTL_MAX)
        while self._now() < limit + CONVERGE_WITHIN:
            if self._converged() and not self._unreaped():
                break
            await asyncio.sleep(0.05)

    def _members(self) -> list[SimNode]:
        membership = self._membership()
        names = membership.members if membership is not None else tuple(self.nodes)
        return [self.nodes[m] for m in names if m in self.nodes]

    def _converged(self) -> bool:
        leader = self._leader()
        if leader is None:
            return False
        commit = leader.core.log.commit
        for node in self._members():
            if node.storage is None or node.storage._sm is None:
                return False
            if node.storage.state.applied_index < commit:
                return False
        return True

    def _unreaped(self) -> list[str]:
        return [
            f"{node.node_id}:{key}"
            for node in self._members()
            if node.storage is not None and node.storage._sm is not None
            for key in unreaped(TTL_PREFIX, node.storage.state)
        ]

    def _tally(self) -> None:
        """What the run did, beside the faults counted as they came (``stats``)."""
        for node in self.nodes.values():
            if node.driver is not None:
                snaps = node.driver.snapshots
                self.stats["compactions"] = self.stats.get("compactions", 0) + snaps.compactions
                # taken here or installed from a leader, over every incarnation
                has_file = node.driver.disk.latest_snapshot() is not None
                self.stats["snapshot files"] = self.stats.get("snapshot files", 0) + has_file
        self.stats["watch events"] = sum(len(w.events) for w in self.watchers)
        self.stats["acknowledged"] = sum(1 for op in self.history if op.status == "ok")

    # -- checks ---------------------------------------------------------------
    def _check(self) -> None:
        problems = [f for n in self.nodes.values() for f in n.failures]
        if problems:
            self._fail("a role died", "\n".join(problems))
        if not self._converged():
            self._fail("convergence", self._positions())
        members = self._members()
        digests = {n.node_id: n.storage.state.digest() for n in members if n.storage}
        if len(set(digests.values())) != 1:
            self._fail("convergence", f"state.db digests differ: {digests}\n{self._positions()}")
        if self._torn:
            self._fail("atomic batches", "\n".join(self._torn[:10]))
        stale, checked = stale_local_reads(self._local_reads, self._node_acks, self._deletes)
        self.stats["local reads after a write there"] = checked
        if stale:
            self._fail("read your writes on a node", "\n".join(stale[:10]))
        if unreaped := self._unreaped():
            self._fail("ttl expiry", f"expired keys still live: {unreaped}")
        report = lin.check(self.history, timeout_s=10.0)
        if report.ok is False:
            self._fail("linearizability", report.explain())
        storage = members[0].storage
        assert storage is not None
        if lost := lost_writes(self._acked, storage.state):
            self._fail("acknowledged write lost", "\n".join(lost))
        for w in self.watchers:
            if w.problems:
                self._fail("watch order", "\n".join(w.problems[:10]))
            if gap := watch_gaps(w, storage.state):
                self._fail("watch without gaps", gap)
        self._fingerprint(digests)

    def _positions(self) -> str:
        lines = []
        for n in self.nodes.values():
            d, s = n.driver, n.storage
            core = f"{d.core.role.name} t{d.core.term} c{d.core.log.commit}" if d else "down"
            st = f"applied {s.state.applied_index}" if s and s._sm else "down"
            lines.append(f"  {n.node_id}: consensus {core}; storage {st}; front {n.up('front')}")
        return "\n".join(lines)

    def _fail(self, what: str, detail: str) -> None:
        raise SimFailure(f"seed {self.seed} ({self.opts.nodes} nodes): {what}\n{detail}")

    def _fingerprint(self, digests: dict[str, str]) -> None:
        h = hashlib.sha256()
        for op in self.history:
            h.update(op.describe().encode())
        for w in self.watchers:
            h.update(repr((w.start, w.events)).encode())
        h.update(repr(sorted(digests.items())).encode())
        h.update(repr((self.net.sent, self.net.dropped, sorted(self.stats.items()))).encode())
        self.trace_hash = h.hexdigest()


def _config(node_id: str, data_dir: str, peers: dict[str, str], *, spare: bool) -> NodeConfig:
    index = int(node_id[1:])
    return NodeConfig(
        node_id=node_id,
        listen=f"10.0.0.{index}:4100",
        data_dir=data_dir,
        peers={} if spare else dict(peers),
        join="10.0.0.1:4100" if spare else None,
        insecure=True,
        tick_ms=100,
        election_ticks=5,
        heartbeat_ticks=1,
        auto_promote=False,
        snapshot_every=10,
        snapshot_trailing=2,
        request_timeout_ms=2_000,
        secrets=Secrets(cluster_key="sim-cluster-key"),
    ).validate()


class _Ids:
    """``secrets`` for the modules that draw request ids from it, seeded."""

    def __init__(self, rng: random.Random) -> None:
        self.randbits = rng.getrandbits


@contextlib.contextmanager
def _deterministic_ids(rng: random.Random) -> Iterator[None]:
    """Request ids from the seed (the front's proposer and storage's reaper draw them
    from ``secrets``, their module's import, replaced for the run)."""
    name, modules = "secrets", (writes, service_ttl)
    saved = [vars(m)[name] for m in modules]
    for m in modules:
        setattr(m, name, _Ids(rng))
    try:
        yield
    finally:
        for m, original in zip(modules, saved, strict=True):
            setattr(m, name, original)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The roles' logs off during a run (they cost time; the checks say what failed)."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _close_loop(loop: SimLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.set_exception_handler(lambda _loop, _context: None)  # a killed front's leftovers
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def run_seed(seed: int, options: NodeSimOptions | None = None) -> NodeSimulation:
    """Run one seed; raises :class:`SimFailure`."""
    sim = NodeSimulation(seed, options)
    sim.run()
    return sim
