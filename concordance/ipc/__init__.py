"""ZeroMQ sockets between a node's roles: requests with ids and deadlines, one-way pushes, events.

This implements the socket half of docs/PROTOCOL.md (§1, §2, §4) on top of
``concordance.protocol.wire``, which owns every byte. It exists so that no role ever
touches a raw socket option, frame list or ``zmq.ZMQError``: roles see typed
bodies, ``ConcordanceError`` from the other side, and ``IpcError`` for the
plumbing.

Rules / theory of operation:

- One ``zmq.asyncio.Context`` per process (``context()``), created after the
  process starts; every socket closes with ``linger=0``.
- Nothing waits forever. A request has a timeout that covers handing it to a
  connection *and* the reply (``IpcTimeout``); a client one-way send waits at
  most its timeout; server-side sends never wait (``ROUTER_MANDATORY`` turns
  "unknown peer" and "pipe full" into immediate errors).
- Replies are matched by id; late or unmatched replies are dropped and logged
  at debug. Undecodable input is dropped and logged at warning; a receive
  loop never dies of a bad message.
- ``zmq.ZMQError`` and msgpack failures leave this module only as
  ``IpcError`` subclasses, raised ``from`` the original.
- Time: request deadlines, timeouts, "sent recently" and the subscription
  wait run on the ``clock`` a socket is given (``concordance.clock``,
  :data:`SYSTEM_CLOCK` by default); only the bind retry, which waits for the
  kernel, reads the loop's time itself.
- Endpoints are filesystem sockets in the node's private run directory
  (``run_dir``, ``concordance.ipc.paths``: 0700, ours, checked at start), so
  no other user can bind or connect to them. A binder holds a lock beside
  its socket while bound, so a second binder fails with ``EADDRINUSE``
  instead of stealing the socket; binders also keep ``IPC_FILTER_UID`` (our
  uid) as a second fence.

Concurrency: all methods run on the process's event loop; any number of
``RpcClient.request`` calls may be outstanding at once. ``RpcServer.recv``
and ``Subscriber.recv`` are meant for one consumer task each.

Modules: ``zmq_base`` (context, endpoints, the socket pump, binding), ``rpc``
(:class:`RpcServer`, :class:`RpcClient`), ``pubsub`` (:class:`Publisher`,
:class:`Subscriber`), ``paths`` (the run directory and bind lock), ``sockets``
(the Protocols roles open their ends through), ``fronts``, ``fdpass``. The
names below are re-exported lazily, so importing ``concordance.ipc.paths``
(``concordance node`` checks the run directory with it) does not load ZeroMQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concordance import lazy

if TYPE_CHECKING:
    from concordance.ipc.paths import run_dir as run_dir
    from concordance.ipc.pubsub import Publisher as Publisher
    from concordance.ipc.pubsub import Subscriber as Subscriber
    from concordance.ipc.rpc import RpcClient as RpcClient
    from concordance.ipc.rpc import RpcServer as RpcServer
    from concordance.ipc.zmq_base import BIND_WAIT as BIND_WAIT
    from concordance.ipc.zmq_base import EVENTS_HWM as EVENTS_HWM
    from concordance.ipc.zmq_base import RPC_HWM as RPC_HWM
    from concordance.ipc.zmq_base import SEND_TIMEOUT as SEND_TIMEOUT
    from concordance.ipc.zmq_base import MessageHandler as MessageHandler
    from concordance.ipc.zmq_base import context as context
    from concordance.ipc.zmq_base import endpoint as endpoint
    from concordance.ipc.zmq_base import is_address_in_use as is_address_in_use

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "run_dir": "paths",
    "Publisher": "pubsub",
    "Subscriber": "pubsub",
    "RpcClient": "rpc",
    "RpcServer": "rpc",
    "BIND_WAIT": "zmq_base",
    "EVENTS_HWM": "zmq_base",
    "RPC_HWM": "zmq_base",
    "SEND_TIMEOUT": "zmq_base",
    "MessageHandler": "zmq_base",
    "context": "zmq_base",
    "endpoint": "zmq_base",
    "is_address_in_use": "zmq_base",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy.exports(__name__, _EXPORTS)
