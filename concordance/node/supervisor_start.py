"""What ``concordance node`` execs: supervisord, woken once so it starts the roles at once.

Why: supervisord's main loop polls its descriptors with a one-second timeout
and only then looks at its programs, so the first spawn of the roles came a
full second after supervisord was up, on every node start and restart (about
a fifth of a restart's time to ready on an idle machine). A descriptor that
turns readable ends that first poll early: a thread here waits for the
supervisor's control socket to accept, connects once and closes, and the
first loop turn spawns the roles. supervisord sees one client that said
nothing; nothing else changes (the same configuration, ``-n``, the same
process, which the thread leaves alone after that connection).

Usage: ``python -m concordance.node.supervisor_start SOCKET supervisord-args...``.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["WAKE_WITHIN", "main", "wake_when_listening"]

WAKE_WITHIN: Final = 10.0  # seconds the thread tries; supervisord then starts the roles anyway
_RETRY: Final = 0.005  # seconds between tries while the socket is not yet accepting


def wake_when_listening(
    path: str, within: float = WAKE_WITHIN, now: Callable[[], float] = time.monotonic
) -> bool:
    """Connect to the unix socket ``path`` once it accepts, then close; whether it did
    within ``within`` seconds."""
    deadline = now() + within
    while now() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError:  # not bound yet, or an old socket file nobody listens on
                time.sleep(_RETRY)
                continue
            return True
    return False


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.exit("usage: python -m concordance.node.supervisor_start SOCKET [supervisord args...]")
    path = args.pop(0)
    threading.Thread(target=wake_when_listening, args=(path,), daemon=True).start()
    from supervisor import supervisord  # imported here: the thread is already waiting

    supervisord.main(args)


if __name__ == "__main__":
    main()
