"""``concordance ctl --endpoint URL [--api-key K] restart ROLE|all``: restarts over the API.

For operators without a shell on the node's machine: it calls
``POST /api/v1/cluster/roles/{role}/restart`` (full API key) and then waits
until the node serves again, i.e. ``/api/v1/cluster/status`` shows the role up
under a new pid and ``/readyz`` answers 200. ``all`` is a rolling restart:
storage, consensus, front, each waited for before the next, so at most one
role of the node is ever down. Plain ``urllib``: no event loop, no client
retries that could hide a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from concordance.cli.common import api_key
from concordance.timing import HAND_OVER_TIMEOUT, ROLLING_ORDER

__all__ = ["run_remote"]

POLL = 0.1


class CtlError(Exception):
    """A failed step, with the message to print."""


def _call(
    base: str, method: str, path: str, key: str | None, timeout: float = 15.0
) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _pid(base: str, key: str | None, role: str) -> int | None:
    try:
        status, body = _call(base, "GET", "/api/v1/cluster/status", key, timeout=3.0)
    except OSError:
        return None  # the front itself is restarting
    if status != 200 or not isinstance(body, dict):
        return None
    state = (body.get("roles") or {}).get(role) or {}
    pid = state.get("pid")
    return pid if state.get("up") and isinstance(pid, int) else None


def _ready(base: str) -> bool:
    try:
        return _call(base, "GET", "/readyz", None, timeout=3.0)[0] == 200
    except OSError:
        return False


def restart_one(base: str, key: str | None, role: str) -> float:
    """Restart ``role``; seconds until the node served again."""
    old = _pid(base, key, role)
    started = time.monotonic()
    status, body = _call(base, "POST", f"/api/v1/cluster/roles/{role}/restart", key)
    if status != 200:
        error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        raise CtlError(f"{role}: {status} {error.get('code', '')}: {error.get('message', '')}")
    deadline = started + HAND_OVER_TIMEOUT
    while time.monotonic() < deadline:
        pid = _pid(base, key, role)
        if pid is not None and pid != old and _ready(base):
            return time.monotonic() - started
        time.sleep(POLL)
    raise CtlError(f"{role}: not serving again after {HAND_OVER_TIMEOUT:.0f} s")


def run_remote(args: argparse.Namespace) -> int:
    if args.action != "restart" or args.role is None:
        print("concordance ctl --endpoint: only 'restart ROLE|all' is available", file=sys.stderr)
        return 2
    base = args.endpoint.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    key = api_key(args.api_key, args.api_key_file)
    roles = ROLLING_ORDER if args.role == "all" else (args.role,)
    try:
        for role in roles:
            took = restart_one(base, key, role)
            print(f"{role}: restarted, serving again after {took:.2f} s")
    except CtlError as e:
        print(f"concordance ctl: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"concordance ctl: cannot reach {base}: {e}", file=sys.stderr)
        return 1
    return 0
