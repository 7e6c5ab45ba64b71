"""The ``concordance`` command: run nodes, control their roles, use and administer the store.

    concordance node|cluster|restore|ctl ...        the server side (cli/server.py)
    concordance kv get|put|delete|list|watch|txn    keys (cli/kv.py)
    concordance changes|member|leader|endpoint|snapshot ...   feed and admin (cli/admin.py)
    concordance completion bash|zsh

Client flags (``--endpoints``, ``--json``, TLS files, ...) go anywhere on the
line. Every failure is one line on stderr and a distinct exit code (README):
never a traceback. Only this package (and ``procs/``) reads argv and the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from concordance import errors
from concordance.cli import admin, completion, kv, server
from concordance.cli.common import EXIT, client_flags, exit_code
from concordance.cli.values import InputError
from concordance.client.failures import ClientConfigError
from concordance.config import ConfigError
from concordance.environment import read_client

__all__ = ["main"]

SERVER_MODULES = {"supervisor", "zmq", "uvloop", "msgpack", "cryptography"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="concordance: %(message)s")
    try:
        if args.run is None:
            print(completion.script(parser, args.shell), end="")
            return 0
        result: int = args.run(args)
        return result
    except (ConfigError, ClientConfigError, InputError) as e:
        return _fail(str(e), EXIT["usage"])
    except errors.ConcordanceError as e:
        return _fail(f"{e.code}: {e.message}", exit_code(e))
    except ModuleNotFoundError as e:
        if e.name not in SERVER_MODULES:
            raise
        return _fail(
            f"this command needs the server's dependencies ({e.name} is missing): "
            "pip install 'concordance[server]'",
            EXIT["error"],
        )
    except KeyboardInterrupt:
        return EXIT["interrupted"]
    except BrokenPipeError:  # `concordance kv list ... | head`
        sys.stderr.close()
        return EXIT["ok"]
    except OSError as e:  # a file to write or read: its own words
        return _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT["error"])
    except Exception as e:  # a bug: still one line; CONCORDANCE_DEBUG=1 shows the traceback
        if read_client().debug:
            raise
        return _fail(f"unexpected {type(e).__name__}: {e} (CONCORDANCE_DEBUG=1 for more)",
                     EXIT["error"])  # fmt: skip


def _fail(message: str, code: int) -> int:
    print(f"concordance: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    flags = client_flags()
    parser = argparse.ArgumentParser(
        prog="concordance",
        description="Concordance: a strongly consistent configuration store.",
        parents=[flags],
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    server.add_commands(sub)
    kv.add_commands(sub, flags)
    admin.add_commands(sub, flags)
    completion.add_command(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
