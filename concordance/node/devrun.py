"""``make run``: a single dev node with a generated API key, printed with a curl example.

The dev keys are kept in the data dir (mode 0600) so restarts keep working
with the same key. Production nodes get their keys from the environment; a
key set there wins here too. The node is started with the keys in its own
environment (``concordance.environment.child_env``): this process's is not
written.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

from concordance import environment
from concordance.config import ConfigError


def _dev_secret(path: Path, make: str) -> str:
    """The secret kept at ``path``, or ``make`` written there first.

    Created 0600 in one step (never readable by others, whatever the umask, not even
    for a moment) and never through a symlink (``O_EXCL`` fails on one).
    """
    if path.exists() and not path.is_symlink():
        return path.read_text().strip()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SystemExit(f"refusing to write a secret through {path}: it is a symlink") from None
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:4100")
    parser.add_argument("--data", default="./data")
    parser.add_argument("--id", default="n1")
    args = parser.parse_args(argv)
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    try:
        given = environment.read_node().secrets
    except ConfigError as e:  # as ``concordance node`` would say it: one line, exit 2
        print(f"concordance: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    keys = {}  # the dev keys the environment does not set
    api_key = given.api_key
    if api_key is None:
        api_key = keys["CONCORDANCE_API_KEY"] = _dev_secret(
            data / "dev-api-key", "dev-" + secrets.token_urlsafe(24)
        )
    if not given.encryption_keys:
        keys["CONCORDANCE_ENCRYPTION_KEY"] = _dev_secret(
            data / "dev-encryption-key", base64.b64encode(secrets.token_bytes(32)).decode()
        )
    if given.cluster_key is None:
        # Its own cluster key (API.md §1: no default), so a dev node can take members later.
        keys["CONCORDANCE_CLUSTER_KEY"] = _dev_secret(
            data / "dev-cluster-key", secrets.token_hex(32)
        )
    url = f"http://{args.listen}"
    print(
        f"""
Concordance dev node {args.id} on {url}, data in {data}
API key: {api_key}

Try it from another terminal:
  curl -s -X PUT {url}/api/v1/kv/tenant:acme/settings/theme \\
       -H 'Authorization: Bearer {api_key}' -d '{{"value": "dark"}}'
  curl -s {url}/api/v1/kv/tenant:acme/settings/theme -H 'Authorization: Bearer {api_key}'

Ctrl-C stops the node.
""",
        flush=True,
    )
    node = ["-m", "concordance.cli", "node", "--id", args.id, "--listen", args.listen]
    os.execve(
        sys.executable, [sys.executable, *node, "--data", str(data)], environment.child_env(keys)
    )


if __name__ == "__main__":
    main()
