"""The nemesis: a seeded schedule of faults, one at a time, each held a few seconds, then healed.

Every step draws the same amount of randomness from the run's generator whatever happens
at run time (the fault kind, hold and gap times, and a few numbers in [0, 1) that pick
targets among whatever nodes exist then), so a seed always gives the same sequence of
fault *choices*. Which node is leader when a fault starts, and so which process a "kill the
leader" hits, depends on real timing and is not reproducible; the report lists what was
actually done.

Faults (Jepsen / etcd robustness style):

* ``kill-node``: ``kill -9`` of a whole node (supervisor and roles), restarted after the hold;
* ``kill-role``: ``kill -9`` of one role (front, consensus, storage) on the leader or a
  follower; supervisord restarts it;
* ``restart-role``: planned restarts of one role (front, consensus, storage) on the leader
  or a follower, one after the other for the hold, as ``ctl restart ROLE`` does them
  (clients should see nothing: issue 21);
* ``pause``: SIGSTOP of a node's supervisor and roles, SIGCONT after the hold;
* ``partition``: a random minority/majority split (refused or blackholed links);
* ``isolate-leader``: the leader alone on one side;
* ``bridge``: two halves that cannot talk, and one node that talks to both;
* ``one-way``: links cut in one direction only (leader -> a follower, a follower ->
  leader, every follower -> leader, or leader -> every follower);
* ``transfer``: leadership transfer to a random follower;
* ``replace-member``: remove a follower (now and then the leader itself), stop it, delete
  its data, and let a new node (a new id: ids are never reused) join with ``--join``; the
  fault ends when it is a voter;
* ``kill-all``: ``kill -9`` of every node at once, all restarted after the hold;
* ``kill-role-all``: ``kill -9`` of the same role on every node at once;
* ``delay``: every peer link slowed by 50-250 ms;
* ``compound``: a network fault and a process fault at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from concordance.config import ROLES
from tests.chaos.cluster import ChaosCluster
from tests.integration.helpers import Node, wait_for

log = logging.getLogger("chaos.nemesis")

KINDS: dict[str, float] = {
    "kill-node": 1.0,
    "kill-role": 1.5,
    "pause": 1.0,
    "partition": 1.0,
    "isolate-leader": 1.0,
    "bridge": 0.7,
    "one-way": 1.0,
    "transfer": 0.8,
    "replace-member": 0.6,
    "kill-all": 0.4,
    "kill-role-all": 0.4,
    "delay": 0.4,
    "compound": 1.2,
    "restart-role": 1.0,
}
NETWORK = ("partition", "isolate-leader", "bridge", "one-way", "delay")
PROCESS = ("kill-node", "kill-role", "restart-role", "pause", "transfer", "replace-member")
LEADER_WAIT = 5.0  # seconds a fault that needs a leader waits for one
PROMOTION_TIMEOUT = 40.0


@dataclass
class Fault:
    kind: str
    start: float  # seconds since the run began
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    end: float | None = None
    error: str = ""

    def describe(self) -> str:
        end = "?" if self.end is None else f"{self.end:7.2f}"
        extra = f" ERROR {self.error}" if self.error else ""
        info = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.start:7.2f} .. {end}  {self.kind:15s} {self.target} {info}{extra}"


class Nemesis:
    def __init__(
        self,
        cluster: ChaosCluster,
        rng: random.Random,
        t0: float,
        hold: tuple[float, float] = (2.0, 5.0),
        gap: tuple[float, float] = (1.0, 3.0),
        kinds: dict[str, float] | None = None,
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.t0 = t0
        self.hold = hold
        self.gap = gap
        self.kinds = kinds or KINDS
        self.faults: list[Fault] = []
        self._killed: set[str] = set()  # nodes down because of us

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, until: float, min_faults: int = 0, limit: float | None = None) -> None:
        """Inject faults until the monotonic time ``until`` (the last one is healed first),
        and on until ``min_faults`` were injected, but not past ``limit``: a busy
        machine slows faults down (a member replacement can take 20 s), and a run
        must still exercise what it promises."""
        names = list(self.kinds)
        weights = [self.kinds[k] for k in names]
        limit = until if limit is None else max(until, limit)
        await asyncio.sleep(self.rng.uniform(*self.gap))
        while time.monotonic() < until or (
            len(self.faults) < min_faults and time.monotonic() < limit
        ):
            kind = self.rng.choices(names, weights)[0]
            hold = self.rng.uniform(*self.hold)
            gap = self.rng.uniform(*self.gap)
            r = [self.rng.random() for _ in range(8)]
            hold = max(0.5, min(hold, until - time.monotonic()))  # end about on time
            fault = Fault(kind, self.now())
            self.faults.append(fault)
            try:
                await self._do(fault, hold, r)
            except Exception as e:  # record it and carry on healed
                fault.error = f"{type(e).__name__}: {e}"[:300]
                log.warning("fault %s failed: %s", kind, fault.error)
            finally:
                await self.heal()
                fault.end = self.now()
            log.info("fault %s", fault.describe())
            await asyncio.sleep(gap)

    # -- helpers ----------------------------------------------------------------------------
    async def _do(self, fault: Fault, hold: float, r: list[float]) -> None:
        await getattr(self, "_" + fault.kind.replace("-", "_"))(fault, hold, r)

    async def _role_pid(self, node: Node, role: str) -> int:
        """The role's pid once its supervisor answers and it runs (a node may be starting)."""
        pid: int = await asyncio.to_thread(
            wait_for, lambda: node.role_pids().get(role), 20.0, f"{node.node_id}'s {role}"
        )
        return pid

    async def _kill_role_of(self, node: Node, role: str) -> None:
        pid = await self._role_pid(node, role)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(node.wait_role_restarted, role, pid, 30.0)

    async def _roles(self) -> tuple[Node | None, list[Node]]:
        """The leader (waiting a little for one) and the other live members."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_WAIT
        while (leader := await self.cluster.leader()) is None and loop.time() < deadline:
            await asyncio.sleep(0.2)
        others = [n for n in self.cluster.live() if n is not leader]
        return leader, others

    async def _pick(self, r_side: float, r_which: float) -> tuple[Node, str]:
        """The leader (r_side < 0.5) or a follower; any live node without a leader."""
        leader, others = await self._roles()
        if leader is not None and (r_side < 0.5 or not others):
            return leader, "leader"
        pool = others or self.cluster.live()
        if not pool:
            raise RuntimeError("no live node")
        return pool[int(r_which * len(pool))], "follower" if leader else "no-leader"

    async def heal(self) -> None:
        """Undo whatever is still in effect: network, pauses, killed nodes."""
        cluster = self.cluster
        await asyncio.to_thread(cluster.net.heal)
        for node_id in list(cluster.paused):
            if node_id in cluster.nodes:
                await asyncio.to_thread(cluster.resume, cluster.nodes[node_id])
        for node_id in list(self._killed):
            node = cluster.nodes.get(node_id)
            if node is not None and not node.running:
                await asyncio.to_thread(node.start, False)
            self._killed.discard(node_id)

    async def _members_view(self, leader: Node) -> list[dict[str, Any]]:
        st = await self.cluster.status(leader)
        return list(st["members"]) if st else []

    # -- faults -----------------------------------------------------------------------------
    async def _kill_node(self, fault: Fault, hold: float, r: list[float]) -> None:
        node, side = await self._pick(r[0], r[1])
        fault.target = f"{node.node_id} ({side})"
        self._killed.add(node.node_id)
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(hold)

    async def _kill_role(self, fault: Fault, hold: float, r: list[float]) -> None:
        node, side = await self._pick(r[0], r[1])
        role = ROLES[int(r[2] * len(ROLES))]
        fault.target = f"{node.node_id} ({side})"
        fault.detail["role"] = role
        await self._kill_role_of(node, role)
        fault.detail["restarted_after"] = round(self.now() - fault.start, 2)

    async def _restart_role(self, fault: Fault, hold: float, r: list[float]) -> None:
        node, side = await self._pick(r[0], r[1])
        role = ROLES[int(r[2] * len(ROLES))]
        fault.target = f"{node.node_id} ({side})"
        fault.detail["role"] = role
        until = self.now() + hold
        restarts = 0
        while restarts == 0 or self.now() < until:
            await asyncio.to_thread(node.control().restart, role)
            restarts += 1
        fault.detail["restarts"] = restarts

    async def _kill_all(self, fault: Fault, hold: float, r: list[float]) -> None:
        nodes = self.cluster.live()
        fault.target = ",".join(n.node_id for n in nodes)
        self._killed.update(n.node_id for n in nodes)
        await asyncio.gather(*(asyncio.to_thread(n.kill) for n in nodes))
        await asyncio.sleep(hold)

    async def _kill_role_all(self, fault: Fault, hold: float, r: list[float]) -> None:
        nodes = self.cluster.live()
        role = ROLES[int(r[2] * len(ROLES))]
        fault.target = ",".join(n.node_id for n in nodes)
        fault.detail["role"] = role
        await asyncio.gather(*(self._kill_role_of(n, role) for n in nodes))
        fault.detail["restarted_after"] = round(self.now() - fault.start, 2)

    async def _delay(self, fault: Fault, hold: float, r: list[float]) -> None:
        ms = 50 + int(r[2] * 200)
        fault.target = "every link"
        fault.detail["ms"] = ms
        await asyncio.to_thread(self.cluster.net.delay, ms)
        await asyncio.sleep(hold)

    async def _compound(self, fault: Fault, hold: float, r: list[float]) -> None:
        """A network fault and a process fault together, each with its own target."""
        parts = [
            Fault(NETWORK[int(r[3] * len(NETWORK))], fault.start),
            Fault(PROCESS[int(r[7] * len(PROCESS))], fault.start),
        ]
        draws = [r[:3] + r[4:5], r[4:7] + r[3:4]]

        async def network() -> None:  # healed after its hold, whatever the other part does
            try:
                await self._do(parts[0], hold, draws[0])
            finally:
                await asyncio.to_thread(self.cluster.net.heal)

        got = await asyncio.gather(
            network(), self._do(parts[1], hold, draws[1]), return_exceptions=True
        )
        fault.target = " + ".join(f"{p.kind} {p.target}" for p in parts)
        fault.detail = {f"{p.kind}.{k}": v for p in parts for k, v in p.detail.items()}
        errors = [f"{p.kind}: {e!r}" for p, e in zip(parts, got, strict=True) if e is not None]
        if errors:
            raise RuntimeError("; ".join(errors))

    async def _pause(self, fault: Fault, hold: float, r: list[float]) -> None:
        node, side = await self._pick(r[0], r[1])
        fault.target = f"{node.node_id} ({side})"
        pids = await asyncio.to_thread(self.cluster.pause, node)
        fault.detail["pids"] = len(pids)
        await asyncio.sleep(hold)

    async def _partition(self, fault: Fault, hold: float, r: list[float]) -> None:
        ids = [n.node_id for n in self.cluster.live()]
        random.Random(r[0]).shuffle(ids)
        minority = 1 + int(r[1] * (max(1, (len(ids) - 1) // 2)))
        groups = [sorted(ids[:minority]), sorted(ids[minority:])]
        blackhole = r[2] < 0.3
        fault.target = f"{groups[0]} | {groups[1]}"
        fault.detail["blackhole"] = blackhole
        await asyncio.to_thread(self.cluster.net.partition, groups, blackhole)
        await asyncio.sleep(hold)

    async def _isolate_leader(self, fault: Fault, hold: float, r: list[float]) -> None:
        leader, others = await self._roles()
        if leader is None:
            raise RuntimeError("no leader to isolate")
        blackhole = r[2] < 0.3
        fault.target = leader.node_id
        fault.detail["blackhole"] = blackhole
        groups = [[leader.node_id], [n.node_id for n in others]]
        await asyncio.to_thread(self.cluster.net.partition, groups, blackhole)
        await asyncio.sleep(hold)

    async def _bridge(self, fault: Fault, hold: float, r: list[float]) -> None:
        ids = [n.node_id for n in self.cluster.live()]
        if len(ids) < 3:
            raise RuntimeError(f"a bridge needs 3 live nodes, not {ids}")
        random.Random(r[0]).shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        half = len(rest) // 2
        left, right = sorted(rest[:half]), sorted(rest[half:])
        fault.target = f"{left} <{bridge}> {right}"
        net = self.cluster.net

        def cut() -> None:
            for a in left:
                for b in right:
                    net.cut(a, b)

        await asyncio.to_thread(cut)
        await asyncio.sleep(hold)

    async def _one_way(self, fault: Fault, hold: float, r: list[float]) -> None:
        leader, others = await self._roles()
        if leader is None or not others:
            raise RuntimeError("one-way faults need a leader and a follower")
        follower = others[int(r[1] * len(others))]
        variant = int(r[0] * 4)
        links = [
            [(leader.node_id, follower.node_id)],
            [(follower.node_id, leader.node_id)],
            [(f.node_id, leader.node_id) for f in others],
            [(leader.node_id, f.node_id) for f in others],
        ][variant]
        fault.target = ", ".join(f"{a}->{b}" for a, b in links)
        fault.detail["variant"] = ["leader->follower", "follower->leader", "leader deaf",
                                   "leader mute"][variant]  # fmt: skip
        net = self.cluster.net

        def cut() -> None:
            for a, b in links:
                net.one_way(a, b)

        await asyncio.to_thread(cut)
        await asyncio.sleep(hold)

    async def _transfer(self, fault: Fault, hold: float, r: list[float]) -> None:
        leader, others = await self._roles()
        if leader is None or not others:
            raise RuntimeError("a transfer needs a leader and a follower")
        to = others[int(r[1] * len(others))]
        fault.target = f"{leader.node_id} -> {to.node_id}"
        status, body = await self._call(
            leader, "POST", "/api/v1/cluster/leader", {"to": to.node_id}
        )
        fault.detail["status"] = status
        if status != 200:
            fault.detail["answer"] = str(body)[:120]
        await asyncio.sleep(min(hold, 2.0))
        now = await self.cluster.leader()
        fault.detail["leader_after"] = now.node_id if now else None

    async def _replace_member(self, fault: Fault, hold: float, r: list[float]) -> None:
        cluster = self.cluster
        if not cluster.spares:
            fault.target = "skipped: no spare id left"
            return
        if len(cluster.members) != cluster.size:
            raise RuntimeError(f"members {cluster.members}: a replacement is still incomplete")
        leader, others = await self._roles()
        if leader is None or not others:
            raise RuntimeError("a replacement needs a leader and a follower")
        old = leader if r[3] < 0.25 else others[int(r[1] * len(others))]
        fault.detail["removed"] = "leader" if old is leader else "follower"
        new_id = cluster.spares[0]
        fault.target = f"{old.node_id} -> {new_id}"
        await self._change(leader, "DELETE", f"/api/v1/cluster/members/{old.node_id}", None,
                           lambda ms: all(m["id"] != old.node_id for m in ms), old)  # fmt: skip
        fault.detail["removed_after"] = round(self.now() - fault.start, 2)
        await asyncio.to_thread(cluster.retire, old.node_id)
        via = cluster.nodes[cluster.members[int(r[2] * len(cluster.members))]]
        await asyncio.to_thread(cluster.add_node, new_id, via.address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROMOTION_TIMEOUT
        while loop.time() < deadline:
            leader = await cluster.leader()
            if leader is not None and any(
                m["id"] == new_id and m["voter"] for m in await self._members_view(leader)
            ):
                fault.detail["voter_after"] = round(self.now() - fault.start, 2)
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{new_id} was not a voter within {PROMOTION_TIMEOUT}s")

    async def _change(
        self, leader: Node, method: str, path: str, body: Any, done: Any, leaving: Node
    ) -> None:
        """A membership change, asked again (it is idempotent) until the leader shows it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        target = leader
        while loop.time() < deadline:
            status, _ = await self._call(target, method, path, body)
            current = await self.cluster.leader()
            if current is not None and current is not leaving:
                target = current
                if done(await self._members_view(current)):
                    return
            await asyncio.sleep(0.5 if status != 200 else 0.2)
        raise RuntimeError(f"{method} {path} did not take effect in 30s")

    async def _call(self, node: Node, method: str, path: str, body: Any) -> tuple[int | None, Any]:
        http = self.cluster.http
        assert http is not None
        try:
            async with http.request(
                method, f"{node.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                payload: Any = None
                with contextlib.suppress(ValueError):
                    payload = await resp.json(content_type=None)
                return resp.status, payload
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, repr(e)
