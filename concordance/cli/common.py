"""Flags every client command takes, anywhere on the line, and the exit codes.

Why ``SUPPRESS`` defaults: the client flags are added to the top-level parser
*and* to every client subcommand, so ``concordance --json kv get k`` and
``concordance kv get k --json`` both work. argparse lets a subparser's
defaults overwrite what the parent parsed; with ``SUPPRESS`` an absent flag
sets nothing, and :func:`option` resolves flag, then environment, then default.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from concordance import __version__, errors
from concordance.client.endpoints import DEFAULT_ENDPOINT
from concordance.client.failures import ClientConfigError, OutcomeUnknown
from concordance.environment import ClientEnv, read_client

if TYPE_CHECKING:
    from concordance.client.client import Client

__all__ = ["EXIT", "client_flags", "exit_code", "make_client", "option", "run_client"]

EXIT = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "not_found": 3,
    "conflict": 4,
    "unauthorized": 5,
    "unavailable": 6,
    "outcome_unknown": 7,
    "compacted": 8,
    "interrupted": 130,
}

# the settings a variable may give (``concordance.environment.read_client``)
_FROM_ENV: dict[str, Callable[[ClientEnv], str | None]] = {
    "endpoints": lambda env: env.endpoints,
    "api_key": lambda env: env.api_key,
    "tls_cacert": lambda env: env.cacert,
    "tls_cert": lambda env: env.cert,
    "tls_key": lambda env: env.key,
}
_DEFAULTS: dict[str, Any] = {
    "endpoints": DEFAULT_ENDPOINT,
    "api_key": None,
    "tls_cacert": None,
    "tls_cert": None,
    "tls_key": None,
    "json": False,
    "timeout": 30.0,
    "retries": 2,
}


def client_flags() -> argparse.ArgumentParser:
    """A parent parser with the client flags (add it to every client subcommand)."""
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("connection (anywhere on the line)")
    g.add_argument(
        "--endpoints", "--endpoint", metavar="URL,...",
        help=f"[http[s]://]HOST:PORT,... (env CONCORDANCE_ENDPOINTS; default {DEFAULT_ENDPOINT})",
    )  # fmt: skip
    g.add_argument(
        "--api-key",
        metavar="KEY",
        help="visible to every local user (ps): prefer env CONCORDANCE_API_KEY or --api-key-file",
    )
    g.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE")
    g.add_argument(
        "--cacert",
        dest="tls_cacert",
        metavar="FILE",
        help="CA bundle for https (env CONCORDANCE_CACERT)",
    )
    g.add_argument(
        "--cert", dest="tls_cert", metavar="FILE", help="client certificate (env CONCORDANCE_CERT)"
    )
    g.add_argument(
        "--key", dest="tls_key", metavar="FILE", help="client certificate key (env CONCORDANCE_KEY)"
    )
    g.add_argument("--timeout", type=float, metavar="S", help="seconds per try (default 30)")
    g.add_argument("--retries", type=int, metavar="N", help="tries after the first (default 2)")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g.add_argument("--version", action="version", version=f"concordance {__version__}")
    return p


def api_key(flag: str | None, file: str | None) -> str | None:
    """The API key: from ``--api-key-file``, else ``--api-key`` (with a warning: argv is
    public to every local user), else ``CONCORDANCE_API_KEY``.

    Raises:
        ClientConfigError: the key file cannot be read or is empty.
    """
    if file is not None:
        try:
            key = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ClientConfigError(f"--api-key-file {file}: {e}") from None
        if not key:
            raise ClientConfigError(f"--api-key-file {file}: the file is empty")
        return key
    if flag is not None:
        print(
            "concordance: warning: --api-key shows the key to every user of this machine"
            " (ps, /proc); use CONCORDANCE_API_KEY or --api-key-file",
            file=sys.stderr,
        )
        return flag
    return read_client().api_key


def option(args: argparse.Namespace, name: str) -> Any:
    """A client setting: the flag, else its environment variable, else the default."""
    if name == "api_key":
        return api_key(getattr(args, "api_key", None), getattr(args, "api_key_file", None))
    if hasattr(args, name):
        return getattr(args, name)
    from_env = _FROM_ENV.get(name)
    if from_env is not None and (value := from_env(read_client())) is not None:
        return value
    return _DEFAULTS[name]


def make_client(args: argparse.Namespace) -> Client:
    from concordance.client.client import Client  # aiohttp: only for commands that talk

    return Client(
        option(args, "endpoints"),
        option(args, "api_key"),
        retries=option(args, "retries"),
        timeout_s=option(args, "timeout"),
        cacert=option(args, "tls_cacert"),
        cert=option(args, "tls_cert"),
        key=option(args, "tls_key"),
    )


def exit_code(exc: BaseException) -> int:
    """The exit code of an error (README: exit codes)."""
    if isinstance(exc, OutcomeUnknown | errors.Timeout):
        return EXIT["outcome_unknown"]
    if isinstance(exc, errors.NotFound):
        return EXIT["not_found"]
    if isinstance(exc, errors.VersionConflict):
        return EXIT["conflict"]
    if isinstance(exc, errors.Unauthorized | errors.Forbidden):
        return EXIT["unauthorized"]
    if isinstance(exc, errors.Unavailable | errors.EncryptionUnavailable):
        return EXIT["unavailable"]
    if isinstance(exc, errors.Compacted):
        return EXIT["compacted"]
    if isinstance(exc, errors.InvalidKey | errors.InvalidRequest | ClientConfigError):
        return EXIT["usage"]
    return EXIT["error"]


def run_client(args: argparse.Namespace) -> int:
    """Run a client command (``args.command``): build the client, run it, close it."""
    from concordance.cli.output import Output

    async def main() -> int:
        out = Output(bool(option(args, "json")))
        async with make_client(args) as client:
            code: int = await args.command(args, client, out)
            return code

    return asyncio.run(main())
