"""Timestamped hop traces and per-role profiles of a running node (``python -m bench.trace``).

Python imports this module at start-up when its folder is on ``PYTHONPATH``;
it does something only in a role process (supervisord sets
``SUPERVISOR_PROCESS_NAME``) and only when ``CC_TRACE_DIR`` names a folder.
It then wraps the few functions every hop of a write crosses (IPC envelope
encode and decode, TCP data in and out, WebSocket frames out, peer-link
frames out and in, the Raft persist) to write ``monotonic_ns role event`` lines to
``{CC_TRACE_DIR}/{pid}.tr``. ``CLOCK_MONOTONIC`` is one clock for the whole
machine, so the lines of the nine processes merge into one timeline. Nothing
of Concordance itself changes: a traced node runs the same code, a little
slower (a few microseconds a mark).

With ``CC_PROFILE_DIR`` set instead, each role runs under cProfile: ``SIGUSR1``
starts a fresh profile, ``SIGUSR2`` writes it to
``{CC_PROFILE_DIR}/{node}-{role}.prof`` (read it with ``pstats``), so a
profile covers exactly a load's window (docs/PERFORMANCE.md, "Measuring").
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def _install(folder: str, role: str) -> None:
    node = (
        sys.argv[sys.argv.index("--data") + 1].rsplit("/", 1)[-1] if "--data" in sys.argv else "?"
    )
    name = f"{node}-{role[:3]}"
    out = open(f"{folder}/{os.getpid()}.tr", "w", buffering=1 << 16)  # noqa: SIM115 - process-long

    def mark(event: str) -> None:
        out.write(f"{time.monotonic_ns()} {name} {event}\n")

    def flush_forever() -> None:
        while True:
            time.sleep(0.2)
            out.flush()

    threading.Thread(target=flush_forever, daemon=True).start()

    import aiohttp._websocket.writer as ws_writer
    import aiohttp.client_proto as client_proto
    import aiohttp.http_writer as http_writer
    import aiohttp.web_protocol as web_protocol

    import concordance.protocol.wire as wire

    decode, encode = wire.decode_envelope, wire.encode_envelope

    def traced_decode(data: bytes) -> Any:
        env = decode(data)
        mark(f"recv {env.type}")
        return env

    def traced_encode(env: Any) -> bytes:
        mark(f"send {env.type}")
        return encode(env)

    wire.decode_envelope, wire.encode_envelope = traced_decode, traced_encode  # type: ignore[assignment]

    def marked(owner: Any, name: str, label: Callable[..., str]) -> None:
        """Mark ``label(*args)`` before each call of the synchronous ``owner.name``."""
        original = getattr(owner, name)

        def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            mark(label(*args))
            return original(self, *args, **kwargs)

        setattr(owner, name, traced)

    def tcp_in(data: bytes) -> str:
        return f"tcp_in {len(data)} {bytes(data[:4])!r}"

    marked(web_protocol.RequestHandler, "data_received", tcp_in)
    marked(client_proto.ResponseHandler, "data_received", lambda data: f"tcp_in_client {len(data)}")
    marked(http_writer.StreamWriter, "_writelines", lambda chunks: "http_out")
    if role == "front":  # the key routes' own protocol (concordance.front.hot_path)
        import concordance.front.hot_path as hot_path

        marked(hot_path.HotConnection, "data_received", tcp_in)
        marked(hot_path.HotConnection, "_answer", lambda *answer: "http_out")

    frame_out = ws_writer.WebSocketWriter.send_frame

    async def traced_frame_out(
        self: Any, message: bytes, opcode: int, compress: Any = None
    ) -> None:
        mark(f"ws_out {len(message)}")
        await frame_out(self, message, opcode, compress)

    ws_writer.WebSocketWriter.send_frame = traced_frame_out  # type: ignore[method-assign]

    if role == "consensus":
        import concordance.consensus.disk as disk
        import concordance.consensus.driver as driver

        try:
            import concordance.consensus.peers as peers
        except ImportError:  # a checkout from before the peer links (``--source``)
            peers = None
    if role == "consensus" and peers is not None:
        peer_out = peers._Conn.write

        def traced_peer_out(self: Any, frames: Any) -> None:
            frames = list(frames)
            mark(f"peer_out {len(frames)} {sum(len(f) for f in frames)}")
            peer_out(self, frames)

        peers._Conn.write = traced_peer_out  # type: ignore[method-assign]

        frame_in = driver.ConsensusDriver._frame_in

        def traced_frame_in(self: Any, frame: bytes) -> None:
            mark(f"peer_in {len(frame)}")
            frame_in(self, frame)

        driver.ConsensusDriver._frame_in = traced_frame_in  # type: ignore[method-assign]

    if role == "consensus":
        persist = disk.RaftDisk.persist

        async def traced_persist(self: Any, rd: Any) -> None:
            mark("persist_begin")
            await persist(self, rd)
            mark("persist_end")

        disk.RaftDisk.persist = traced_persist  # type: ignore[method-assign]


def _profile(folder: str, role: str) -> None:
    import cProfile
    import signal

    args = sys.argv
    node = args[args.index("--data") + 1].rsplit("/", 1)[-1] if "--data" in args else "?"
    current = [cProfile.Profile()]

    def restart(*_: object) -> None:
        current[0].disable()
        current[0] = cProfile.Profile()
        current[0].enable()

    def dump(*_: object) -> None:
        current[0].disable()
        current[0].dump_stats(f"{folder}/{node}-{role}.prof")
        current[0].enable()

    signal.signal(signal.SIGUSR1, restart)
    signal.signal(signal.SIGUSR2, dump)
    current[0].enable()


_role = os.environ.get("SUPERVISOR_PROCESS_NAME")
if _role and os.environ.get("CC_TRACE_DIR"):
    _install(os.environ["CC_TRACE_DIR"], _role)
elif _role and os.environ.get("CC_PROFILE_DIR"):
    _profile(os.environ["CC_PROFILE_DIR"], _role)
