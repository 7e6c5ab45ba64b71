"""Values that two processes must agree on, each pair side by side.

Why one module: each value below is read by one process and only makes sense
against a value read by another (two roles of a node, two nodes, a role and
its keeper or supervisord, the ctl commands). Defined apart, one side could
be tuned and the other forgotten; here the pairs sit together, and
``tests/unit/test_timing.py`` asserts each relation and says why it holds.

Role-local tuning (batch sizes, retry backoffs, probe timeouts) stays in the
role's own module. Times are seconds.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACK_DELAY",
    "ACK_EVERY",
    "APPLY_STALL",
    "APPLY_WINDOW",
    "CONSENSUS_DRAIN",
    "CONSENSUS_FLUSH",
    "CONSENSUS_HAND_OVER",
    "FRONT_ACCEPT_GRACE",
    "FRONT_HELLO_EVERY",
    "FRONT_HELLO_PERIOD",
    "FRONT_HELLO_POLL",
    "FRONT_READY_TIMEOUT",
    "FRONT_SHUTDOWN_GRACE",
    "HAND_OVER_TIMEOUT",
    "KEEPER_STOP_TIMEOUT",
    "PEER_DEAD_AFTER",
    "PEER_FLUSH",
    "PEER_KEEPALIVE",
    "ROLE_READY_TIMEOUT",
    "ROLLING_ORDER",
    "STOPPING_BOUND",
    "STORAGE_DRAIN",
    "STORAGE_FLUSH",
    "SUPERVISORD_STOPWAITSECS",
    "UNAVAILABLE_RETRY",
    "WATCHING_FRESH",
]

# -- the apply stream: consensus sends committed entries, storage acknowledges ---------
APPLY_WINDOW: Final = 8000  # consensus: unacknowledged entries in flight at most
ACK_EVERY: Final = 1000  # storage: unacknowledged applied entries that send ``applied`` at once
ACK_DELAY: Final = 0.1  # storage: commit and ``applied`` wait this long to cover more batches
APPLY_STALL: Final = 1.0  # consensus: an unacknowledged batch this old was lost (resent)

# -- front_watching: the front repeats it, storage believes it for a while --------------
FRONT_HELLO_POLL: Final = 0.05  # front: between two looks at the roles' connections
FRONT_HELLO_EVERY: Final = 4  # front: polls between two front_hello + front_watching
FRONT_HELLO_PERIOD: Final = FRONT_HELLO_POLL * FRONT_HELLO_EVERY
WATCHING_FRESH: Final = 1.0  # storage: a front's "no watchers" holds this long unrepeated

# -- a role's planned stop, and the front holding requests for its successor -----------
STOPPING_BOUND: Final = 3.0  # front: a role that said ``stopping`` may keep its connection
CONSENSUS_HAND_OVER: Final = 2.0  # consensus: handing leadership over, before ``stopping``
CONSENSUS_DRAIN: Final = 0.5  # consensus: served after ``stopping``, at most
CONSENSUS_FLUSH: Final = 0.2  # consensus: for its last answers to leave before closing
PEER_FLUSH: Final = 0.2  # consensus: for the peer links' queues to leave, on the way out
STORAGE_DRAIN: Final = 0.1  # storage: served after ``stopping``
STORAGE_FLUSH: Final = 0.05  # storage: for its last answers and events to leave

# -- the keepers and supervisord -------------------------------------------------------
SUPERVISORD_STOPWAITSECS: Final = 10  # supervisor.conf: SIGTERM to SIGKILL, every program
KEEPER_STOP_TIMEOUT: Final = 8.0  # both keepers: SIGTERM to SIGKILL of their child
FRONT_SHUTDOWN_GRACE: Final = 5.0  # front: requests in flight after SIGTERM
FRONT_ACCEPT_GRACE: Final = 0.3  # front: between its last accept and closing idle connections
FRONT_READY_TIMEOUT: Final = 30.0  # front keeper: a new front must serve within it
ROLE_READY_TIMEOUT: Final = 20.0  # role keeper: for a successor's imports, or no restart
HAND_OVER_TIMEOUT: Final = 30.0  # ``ctl restart ROLE``, local and remote: waits this long

# -- a front asking a role that has no leader, against the Raft election timeout --------
UNAVAILABLE_RETRY: Final = 1.5  # front: a role answering "unavailable" is asked again this long

# -- peer links between two nodes' consensus --------------------------------------------
PEER_KEEPALIVE: Final = 1.0  # a keepalive goes out after this long without sending
PEER_DEAD_AFTER: Final = 3.0  # a connection silent this long is closed

# -- the order of ``restart all``, local (``concordance ctl --data``) and remote --------
ROLLING_ORDER: Final = ("storage", "consensus", "front")  # ``restart all``: the front last
