"""The front role: every connection to a node (HTTP API, /stream; peer links go to consensus).

Start at :func:`concordance.front.app.make_app`; ``procs/front.py`` serves it
with the real role clients of ``concordance.front.ipc_clients``.
"""

from __future__ import annotations

from concordance.front.app import make_app
from concordance.front.clients import Clients, ConsensusClient, EventSource, StorageClient

__all__ = ["Clients", "ConsensusClient", "EventSource", "StorageClient", "make_app"]
