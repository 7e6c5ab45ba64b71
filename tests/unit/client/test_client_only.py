"""A client-only install works: the client and the CLI import nothing of the server's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVER_ONLY = ("zmq", "uvloop", "supervisor", "msgpack", "cryptography")


def test_client_and_cli_import_no_server_dependency() -> None:
    code = (
        "import sys, concordance.client, concordance.cli\n"
        "concordance.cli.build_parser()\n"
        f"print(sorted(m for m in {SERVER_ONLY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
