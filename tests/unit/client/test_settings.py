"""Client settings that need no server: endpoints, scopes, TLS files, typed results."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from concordance import errors
from concordance.client import (
    Change,
    Client,
    ClientConfigError,
    Entry,
    Status,
    namespace,
    settings_from_env,
)
from concordance.client.endpoints import parse_endpoints


def test_endpoints_parse_bare_and_full_urls_and_refuse_garbage() -> None:
    assert parse_endpoints("a:1, http://b:2/,a:1") == ["http://a:1", "http://b:2"]
    assert parse_endpoints(["c:3"], tls=True) == ["https://c:3"]
    for bad in ("", "ftp://x:1", "http://x:port", "http://x:1/api"):
        with pytest.raises(ClientConfigError):
            parse_endpoints(bad)


def test_scopes_resolve_and_refuse_what_would_leave_the_namespace() -> None:
    assert namespace("user", "acme", user="u1") == "tenant:acme/user:u1/preferences"
    assert namespace("device", "acme", user="u1", device="d") == ("tenant:acme/user:u1/devices/d")
    assert namespace("audit", "acme") == "tenant:acme/audit"
    for scope, ids in (("user", {}), ("tenant", {"user": "u"}), ("nope", {}),
                       ("user", {"user": "a/b"})):  # fmt: skip
        with pytest.raises(errors.InvalidRequest):
            namespace(scope, "acme", **ids)
    client = Client("127.0.0.1:1")
    scope = client.scope("project", tenant="acme", project="p1")
    assert scope.key("flags/beta") == "tenant:acme/projects/p1/flags/beta"
    assert scope.path("tenant:acme/projects/p1/flags/beta") == "flags/beta"
    for bad in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(errors.InvalidKey):
            scope.key(bad)


def test_settings_come_from_the_environment() -> None:
    env = {"CONCORDANCE_ENDPOINTS": "a:1,b:2", "CONCORDANCE_API_KEY": "k",
           "CONCORDANCE_CACERT": "/ca.pem"}  # fmt: skip
    assert settings_from_env(env) == {"endpoints": "a:1,b:2", "api_key": "k", "cacert": "/ca.pem"}


def test_results_are_typed_and_convert_back_to_the_api_json() -> None:
    raw = {"key": "tenant:t/k", "value": [1], "version": 2, "revision": 9, "createdAt": 1,
           "updatedAt": 2, "expiresAt": None}  # fmt: skip
    assert Entry.from_json(raw).to_json() == raw
    change = {"type": "set", "key": "tenant:t/k", "value": 1, "version": 2, "revision": 9,
              "timestamp": 5}  # fmt: skip
    assert Change.from_json(change).to_json() == change
    status = Status.from_json({
        "nodeId": "n1", "role": "leader", "term": 2, "leaderId": "n1", "commitIndex": 5,
        "appliedIndex": 5, "revision": 3,
        "members": [{"id": "n1", "address": "h:1", "voter": True, "matchIndex": 5}],
        "roles": {"front": {"pid": 7, "up": True}, "storage": {"pid": None, "up": False}},
    })  # fmt: skip
    assert status.members[0].match_index == 5 and not status.roles["storage"].up


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "concordance-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def test_tls_files_build_the_context_that_verifies_the_node(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    with pytest.raises(ClientConfigError, match="not a readable file"):
        Client("127.0.0.1:1", cacert=str(tmp_path / "missing.pem"))
    with pytest.raises(ClientConfigError, match="needs its certificate"):
        Client("127.0.0.1:1", key=str(key))
    assert Client("https://127.0.0.1:1").tls is not None  # https alone: the system CAs

    async def scenario() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)

        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"entries": [], "next": None, "revision": 4})

        app = web.Application()
        app.router.add_get("/api/v1/kv", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        port = runner.addresses[0][1]
        try:
            # A bare HOST:PORT with TLS files given means https.
            async with Client(f"127.0.0.1:{port}", cacert=str(cert), retries=0) as c:
                assert c.endpoints == [f"https://127.0.0.1:{port}"]
                assert isinstance(c.tls, ssl.SSLContext)
                assert (await c.list("tenant:t/")).revision == 4
            async with Client(f"https://127.0.0.1:{port}", retries=0) as c:  # CA not trusted
                with pytest.raises(errors.Unavailable, match="cannot connect"):
                    await c.list("tenant:t/")
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
