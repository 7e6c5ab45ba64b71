"""``make run``: a single dev node with a generated API key, printed with a curl example.

The dev keys are kept in the data dir (mode 0600) so restarts keep working
with the same key. Production nodes get their keys from the environment.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path


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
    api_key = os.environ.get("CONCORDANCE_API_KEY") or _dev_secret(
        data / "dev-api-key", "dev-" + secrets.token_urlsafe(24)
    )
    enc_key = os.environ.get("CONCORDANCE_ENCRYPTION_KEY") or _dev_secret(
        data / "dev-encryption-key", base64.b64encode(secrets.token_bytes(32)).decode()
    )
    # Its own cluster key (API.md §1: no default), so a dev node can take members later.
    cluster_key = os.environ.get("CONCORDANCE_CLUSTER_KEY") or _dev_secret(
        data / "dev-cluster-key", secrets.token_hex(32)
    )
    os.environ["CONCORDANCE_API_KEY"] = api_key
    os.environ["CONCORDANCE_CLUSTER_KEY"] = cluster_key
    os.environ["CONCORDANCE_ENCRYPTION_KEY"] = enc_key
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
    from concordance.cli import main as cli_main

    sys.exit(cli_main(["node", "--id", args.id, "--listen", args.listen, "--data", str(data)]))


if __name__ == "__main__":
    main()
