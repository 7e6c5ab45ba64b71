"""One simulated node: its three real roles in one process, each stoppable and crashable.

Why: the node simulation (``node_sim``) needs every role of a node (the
consensus driver, the storage service on its real SQLite files, the front's
service layer) started, stopped cleanly and killed on demand, on the shared
``MemoryIpc``, the simulated loop's clock and the simulated peer network.

How a role is stopped:

* **clean** (a planned stop, what SIGTERM does): the role's own shutdown path
  (``ConsensusDriver.shutdown``, ``StorageService.shutdown``; the front as
  aiohttp stops it: ``on_shutdown``, then in-flight requests finish for up
  to ``FRONT_SHUTDOWN_GRACE``, then the cleanup context closes its clients);
* **abrupt** (a crash, ``kill -9``): its IPC ends close at once (as the kernel
  closes a dead process's sockets), its peer links go, then every task and
  timer it started is cancelled (``sim_loop.RoleRun``). What a cancelled
  task's ``finally`` still does cannot reach anyone: its ends are closed. Its
  files keep what was committed to them (a process crash, not a power cut:
  SQLite's committed transactions survive it).

The front runs without HTTP: its aiohttp application is started
(``Application.startup``, so its real cleanup context builds the proposer,
watch hub, services and event pump) but no server listens; the simulation's
clients call its ``KvService`` and ``WatchHub``, the layer the HTTP handlers call.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from concordance import ipc
from concordance.config import NodeConfig
from concordance.consensus import ConsensusDriver
from concordance.front import app as front_app
from concordance.front import ipc_clients
from concordance.front.app import make_app
from concordance.front.app_state import CLIENTS, HUB, KV
from concordance.front.clients import Clients
from concordance.front.service import KvService
from concordance.front.watch import WatchHub
from concordance.ipc.sockets import Client, Publisher, Server, Sockets, Subscriber
from concordance.storage.service import ServiceTimings, StorageService
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.sim_loop import ROLE, LoopClock, RoleRun
from concordance.testing.sim_net import SimNetwork
from concordance.testing.supervisor import MemorySupervisor
from concordance.timing import FRONT_SHUTDOWN_GRACE

__all__ = ["ROLES", "SimNode", "released_on_crash"]

ROLES = ("consensus", "storage", "front")
STOP_LIMIT = 30.0  # a clean stop that takes longer than this is a bug


class _Ends:
    """The ``Sockets`` of one role incarnation: opens on the shared ``MemoryIpc`` and
    remembers what it opened, so a crash can close it all at once."""

    def __init__(self, ipc_: MemoryIpc) -> None:
        self._ipc = ipc_
        self.opened: list[Server | Publisher | Client | Subscriber] = []

    async def server(self, endpoint: str) -> Server:
        end = await self._ipc.server(endpoint)
        self.opened.append(end)
        return end

    async def publisher(self, endpoint: str) -> Publisher:
        end = await self._ipc.publisher(endpoint)
        self.opened.append(end)
        return end

    def client(
        self, endpoint: str, identity: str | bytes, *, on_message: ipc.MessageHandler | None = None
    ) -> Client:
        end = self._ipc.client(endpoint, identity, on_message=on_message)
        self.opened.append(end)
        return end

    def subscriber(self, endpoint: str) -> Subscriber:
        end = self._ipc.subscriber(endpoint)
        self.opened.append(end)
        return end

    async def close_all(self) -> None:
        for end in self.opened:
            await end.close()


def _conforms(ends: _Ends) -> Sockets:
    """Never called: mypy checks that ``_Ends`` keeps the ``Sockets`` shape."""
    return ends


class _Role:
    """A running incarnation of one role."""

    def __init__(self, name: str, ipc_: MemoryIpc) -> None:
        self.run = RoleRun(name)
        self.ends = _Ends(ipc_)
        self.clock = LoopClock(self.run)
        self.task: asyncio.Task[Any] | None = None
        self.obj: Any = None
        self.stopping = False  # a clean stop began: a front takes no new requests

    async def crash(self) -> None:
        await self.ends.close_all()
        self.run.kill()
        for close in self.run.resources:
            await close()


@contextlib.contextmanager
def released_on_crash() -> Iterator[None]:
    """While a simulation runs: the front's HTTP client session (opened in its cleanup
    context, closed by it on a clean stop) is also closed when the front is killed,
    as the kernel would close its sockets."""
    original = front_app._http_session

    def session() -> aiohttp.ClientSession:
        made = original()
        run = ROLE.get()
        if run is not None:
            run.resources.append(made.close)
        return made

    front_app._http_session = session
    try:
        yield
    finally:
        front_app._http_session = original


class SimNode:
    """The three roles of one node (``cfg``), started and stopped by the simulation."""

    def __init__(
        self,
        cfg: NodeConfig,
        ipc_: MemoryIpc,
        net: SimNetwork,
        rng: random.Random,
        storage_timings: ServiceTimings,
    ) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.ipc = ipc_
        self.net = net
        self.rng = rng
        self.storage_timings = storage_timings
        self.roles: dict[str, _Role] = {}
        self.front_starts = 0
        self.failures: list[str] = []  # roles that died on their own, with why
        # one start or stop of a role at a time, as one supervisor runs one process per role
        self._locks = {role: asyncio.Lock() for role in ROLES}

    # -- state ----------------------------------------------------------------
    def up(self, role: str) -> bool:
        r = self.roles.get(role)
        return r is not None and r.task is not None and not r.task.done()

    @property
    def driver(self) -> ConsensusDriver | None:
        r = self.roles.get("consensus")
        return r.obj if r is not None and self.up("consensus") else None

    @property
    def storage(self) -> StorageService | None:
        r = self.roles.get("storage")
        return r.obj if r is not None and self.up("storage") else None

    @property
    def kv(self) -> KvService | None:
        app = self._app()
        return app[KV] if app is not None and KV in app else None

    @property
    def clients(self) -> Clients | None:
        """The serving front's role clients (a membership change goes through them)."""
        app = self._app()
        return app[CLIENTS] if app is not None and CLIENTS in app else None

    @property
    def hub(self) -> WatchHub | None:
        app = self._app()
        return app[HUB] if app is not None and HUB in app else None

    def _app(self) -> web.Application | None:
        r = self.roles.get("front")
        return r.obj if r is not None and self.up("front") and not r.stopping else None

    def front_run(self) -> RoleRun | None:
        """The serving front's incarnation (client requests run as its tasks); None
        while it is down or stopping (its listener is closed first, as aiohttp does)."""
        r = self.roles.get("front")
        return r.run if r is not None and self.up("front") and not r.stopping else None

    # -- start ----------------------------------------------------------------
    async def start(self, roles: Iterable[str] = ROLES) -> None:
        for role in roles:
            async with self._locks[role]:
                if not self.up(role):
                    await getattr(self, f"_start_{role}")()

    async def _start_consensus(self) -> None:
        r = _Role("consensus", self.ipc)
        self.roles["consensus"] = r
        seed = self.rng.getrandbits(64)

        async def main() -> None:
            driver = await ConsensusDriver.open(
                self.cfg,
                r.ends,
                r.clock,
                net=self.net.factory(self.node_id),
                rng=random.Random(seed),
            )
            r.obj = driver
            await driver.run()

        r.task = r.run.spawn(self._watched("consensus", main()), name=f"{self.node_id} consensus")
        await asyncio.sleep(0)

    async def _start_storage(self) -> None:
        r = _Role("storage", self.ipc)
        self.roles["storage"] = r
        service = StorageService(
            self.cfg, timings=self.storage_timings, clock=r.clock, sockets=r.ends
        )
        r.obj = service
        r.task = r.run.spawn(
            self._watched("storage", service.run()), name=f"{self.node_id} storage"
        )
        await asyncio.sleep(0)

    async def _start_front(self) -> None:
        r = _Role("front", self.ipc)
        self.roles["front"] = r
        incarnation = self.front_starts
        self.front_starts += 1
        data_dir = self.cfg.data_dir

        @contextlib.asynccontextmanager
        async def connect() -> AsyncIterator[Clients]:
            async with ipc_clients.connect(
                data_dir, incarnation, sockets=r.ends, clock=r.clock
            ) as clients:
                yield clients

        # the front's config without --join: a simulated joiner is added by the workload
        front_cfg = replace(self.cfg, join=None)
        app = make_app(
            front_cfg,
            connect,
            supervisor=MemorySupervisor(incarnation=incarnation),
            timers=r.clock,
        )
        started = asyncio.get_running_loop().create_future()

        async def main() -> None:
            app.on_startup.freeze()  # as aiohttp's AppRunner.setup does: freeze after startup
            await app.startup()
            app.freeze()
            r.obj = app
            started.set_result(None)
            await asyncio.Event().wait()  # serves until stopped or killed

        r.task = r.run.spawn(self._watched("front", main()), name=f"{self.node_id} front")
        await asyncio.wait([started, r.task], return_when=asyncio.FIRST_COMPLETED)

    async def _watched(self, role: str, coro: Any) -> None:
        """Run a role; a role that ends with an error is recorded (the simulation fails)."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failures.append(f"{self.node_id} {role} died: {e!r}")

    # -- stop -----------------------------------------------------------------
    async def stop(self, role: str, *, clean: bool) -> None:
        """Stop ``role`` cleanly (its planned stop) or abruptly (a crash)."""
        async with self._locks[role]:
            await self._stop(role, clean=clean)

    async def _stop(self, role: str, *, clean: bool) -> None:
        r = self.roles.get(role)
        if r is None or not self.up(role):
            return
        if r.obj is None:
            clean = False  # SIGTERM before the role set up its handler ends it at once
        if not clean:
            if role == "consensus" and r.obj is not None:
                driver: ConsensusDriver = r.obj
                driver.disk._commit_to_note = None  # a crash writes nothing more
                await driver.peers.close()
                if driver._fds is not None:  # its Unix socket, as the kernel would close it
                    driver._fds.close()
                    driver._fds = None
            await r.crash()
            return
        if role == "front":
            await self._stop_front(r)
        else:
            r.obj.shutdown()
        assert r.task is not None
        done, _ = await asyncio.wait([r.task], timeout=STOP_LIMIT)
        if not done:
            self.failures.append(f"{self.node_id} {role}: a clean stop took over {STOP_LIMIT}s")
            await r.crash()
        r.run.kill()  # anything it left behind

    async def _stop_front(self, r: _Role) -> None:
        app: web.Application = r.obj
        if app is None:
            await r.crash()
            return
        r.stopping = True
        await app.shutdown()
        busy = [t for t in r.run.tasks if t.get_name().startswith("client") and not t.done()]
        if busy:
            await asyncio.wait(busy, timeout=FRONT_SHUTDOWN_GRACE)
        for task in busy:
            task.cancel()
        await app.cleanup()
        assert r.task is not None
        r.task.cancel()

    async def close(self) -> None:
        """The end of a run, after its checks: kill every role (a tenth of a seed's CPU
        went to planned stops here, which the run itself exercises anyway)."""
        for role in ("front", "consensus", "storage"):
            await self.stop(role, clean=False)
