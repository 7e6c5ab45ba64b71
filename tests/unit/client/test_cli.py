"""The ``concordance`` command without a node: parsing, input, errors, exit codes."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path

import pytest

from concordance import errors
from concordance.cli import build_parser, main
from concordance.cli.common import EXIT, exit_code, option
from concordance.cli.values import InputError, parse_value, read_document
from concordance.client import OutcomeUnknown


def test_client_flags_work_before_and_after_the_verb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONCORDANCE_ENDPOINTS", raising=False)
    parser = build_parser()
    for argv in (["--json", "--endpoints", "a:1", "kv", "get", "k"],
                 ["kv", "--json", "get", "k", "--endpoints", "a:1"],
                 ["kv", "get", "k", "--endpoints=a:1", "--json"]):  # fmt: skip
        args = parser.parse_args(argv)
        assert option(args, "json") is True and option(args, "endpoints") == "a:1", argv
        assert args.key == "k"
    args = parser.parse_args(["kv", "get", "k", "--key", "/tls.key"])  # TLS key, not the KV key
    assert (args.key, option(args, "tls_key")) == ("k", "/tls.key")
    assert option(parser.parse_args(["kv", "get", "k"]), "json") is False


def test_environment_fills_in_what_the_line_does_not_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORDANCE_ENDPOINTS", "x:1,y:2")
    monkeypatch.setenv("CONCORDANCE_CACERT", "/ca.pem")
    args = build_parser().parse_args(["member", "list"])
    assert option(args, "endpoints") == "x:1,y:2" and option(args, "tls_cacert") == "/ca.pem"
    args = build_parser().parse_args(["member", "list", "--endpoints", "z:3"])
    assert option(args, "endpoints") == "z:3"


def test_server_commands_keep_their_arguments() -> None:
    args = build_parser().parse_args(
        ["node", "--id", "n1", "--listen", "127.0.0.1:1", "--data", "/d", "--peers", "n1=h:1"]
    )
    assert (args.node_id, args.listen, args.data, args.peers) == ("n1", "127.0.0.1:1", "/d",
                                                                   "n1=h:1")  # fmt: skip
    args = build_parser().parse_args(["ctl", "--data", "/d", "restart", "front"])
    assert (args.action, args.role) == ("restart", "front")


def test_values_come_inline_from_stdin_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("42") == 42 and parse_value("42", as_string=True) == "42"
    assert parse_value("dark") == "dark"
    (tmp_path / "v.json").write_text("[1, 2]\n")
    (tmp_path / "v.txt").write_text("some text\n")
    assert parse_value(f"@{tmp_path / 'v.json'}") == [1, 2]
    assert parse_value(f"@{tmp_path / 'v.txt'}") == "some text"
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert parse_value("-") == "from stdin"
    with pytest.raises(InputError, match="cannot read"):
        parse_value(f"@{tmp_path / 'missing'}")
    (tmp_path / "bad.json").write_text("[1,\n")
    with pytest.raises(InputError, match="not JSON"):
        read_document(str(tmp_path / "bad.json"), "the batch")


def test_each_kind_of_failure_has_its_exit_code() -> None:
    cases = {
        errors.NotFound(): EXIT["not_found"],
        errors.VersionConflict(): EXIT["conflict"],
        errors.Unauthorized(): EXIT["unauthorized"],
        errors.Forbidden(): EXIT["unauthorized"],
        errors.Unavailable(): EXIT["unavailable"],
        OutcomeUnknown("x"): EXIT["outcome_unknown"],
        errors.Timeout(): EXIT["outcome_unknown"],
        errors.Compacted(): EXIT["compacted"],
        errors.InvalidKey(): EXIT["usage"],
    }
    for exc, code in cases.items():
        assert exit_code(exc) == code, exc
    assert len(set(EXIT.values())) == len(EXIT)


def test_a_refused_connection_is_one_line_and_exit_6(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{s.getsockname()[1]}"
    code = main(["kv", "get", "tenant:t/k", "--endpoints", url, "--retries", "0"])
    err = capsys.readouterr().err
    assert code == EXIT["unavailable"]
    assert err.count("\n") == 1 and "connection refused" in err and "Traceback" not in err


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kv", "get", "k", "--endpoints", "ftp://x"]) == EXIT["usage"]
    assert main(["kv", "put", "k", "@/nonexistent/file", "--endpoints", "h:1"]) == EXIT["usage"]
    assert main(["kv", "watch", "--endpoints", "h:1"]) == EXIT["usage"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("concordance: ") for line in lines)


def test_version_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["kv", "get", "--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("concordance ")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _concordance concordance" in script
    assert "[kv]='get put delete list watch txn'" in script and "--endpoints" in script


def test_a_file_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiohttp import web

    async def backup(request: web.Request) -> web.Response:
        return web.Response(body=b"SQLite format 3\x00", content_type="application/octet-stream")

    async def scenario() -> int:
        app = web.Application()
        app.router.add_get("/api/v1/cluster/backup", backup)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"127.0.0.1:{runner.addresses[0][1]}"
        try:
            target = str(tmp_path / "missing-dir" / "b.db")
            return await asyncio.to_thread(main, ["snapshot", "save", target, "--endpoints", url])
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == EXIT["error"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No such file or directory" in err


def test_tls_flags_and_environment_reach_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concordance.cli.common import make_client
    from tests.unit.client.test_settings import _certificate

    cert, key = _certificate(tmp_path)
    args = build_parser().parse_args(
        ["kv", "get", "k", "--endpoints", "h:1", "--cacert", str(cert), "--cert", str(cert),
         "--key", str(key)]
    )  # fmt: skip
    client = make_client(args)
    assert client.endpoints == ["https://h:1"] and client.tls is not None
    assert client.transport.ssl_context is client.tls
    monkeypatch.setenv("CONCORDANCE_CACERT", str(tmp_path / "missing.pem"))
    assert main(["kv", "get", "k", "--endpoints", "h:1"]) == EXIT["usage"]


def test_the_api_key_comes_from_a_file_or_the_environment_and_the_flag_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONCORDANCE_API_KEY", "from-env")
    parser = build_parser()
    assert option(parser.parse_args(["kv", "get", "k"]), "api_key") == "from-env"
    assert capsys.readouterr().err == ""
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    args = parser.parse_args(["kv", "get", "k", "--api-key-file", str(secret)])
    assert option(args, "api_key") == "from-file"
    assert capsys.readouterr().err == ""
    assert option(parser.parse_args(["kv", "get", "k", "--api-key", "on-argv"]), "api_key") == (
        "on-argv"
    )
    assert "--api-key shows the key to every user" in capsys.readouterr().err
    args = build_parser().parse_args(
        ["ctl", "--endpoint", "h:1", "--api-key-file", str(secret), "restart", "front"]
    )
    assert args.api_key_file == str(secret)
    (tmp_path / "empty").write_text("")
    assert main(["kv", "get", "tenant:a/x", "--api-key-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
