"""`tokensync fetch` against the real loopback token server: metadata out, token only on request."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.tokenserver import TokenServer
from tokensync import cli


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("cli-client", "cli-secret", auth_methods=("client_secret_post",))
        yield running


def test_fetch_prints_metadata_but_not_the_token(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    code = cli.main(
        [
            "fetch",
            "--token-url",
            server.url,
            "--client-id",
            "cli-client",
            "--scope",
            "a",
            "--allow-insecure-http",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    meta = json.loads(out)
    assert meta["auth_method"] == "client_secret_post"  # auto fell back from Basic
    # The earlier of expires_in and the JWT's exp (whole seconds on the server's clock).
    assert meta["lifetime_seconds"] in (599, 600)
    assert meta["scope"] == "a"
    assert "access_token" not in meta
    assert server.issued[-1].access_token not in out


def test_fetch_show_token_and_file(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = tmp_path / "cc.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": "x"},
                "spec": {
                    "tokenURL": server.url,
                    "clientID": "cli-client",
                    "clientSecretRef": {"name": "unused-here"},
                    "authMethod": "client_secret_post",
                },
            }
        )
    )
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    code = cli.main(["fetch", "--file", str(manifest), "--allow-insecure-http", "--show-token"])
    meta = json.loads(capsys.readouterr().out)
    assert code == 0
    assert server.verify(meta["access_token"])


def test_fetch_refuses_http_without_opt_in_and_reports_errors(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "wrong-secret")
    assert cli.main(["fetch", "--token-url", server.url, "--client-id", "cli-client"]) == 1
    assert "TokenURLRefused" in capsys.readouterr().err
    code = cli.main(
        ["fetch", "--token-url", server.url, "--client-id", "cli-client", "--allow-insecure-http"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "InvalidClient" in err
    assert "wrong-secret" not in err


def test_fetch_private_key_jwt_by_discovery(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--issuer-url and --private-key: no client secret, the server verifies the assertion."""
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with TokenServer(issuer_path="/realms/cli", discovery="openid") as server:
        server.add_client("jwt-client", auth_methods=["private_key_jwt"], jwks={"keys": [public]})
        code = cli.main(
            [
                "fetch",
                "--issuer-url",
                server.issuer_url,
                "--client-id",
                "jwt-client",
                "--private-key",
                str(key_file),
                "--allow-insecure-http",
            ]
        )
        meta = json.loads(capsys.readouterr().out)
        assert code == 0
        assert meta["auth_method"] == "private_key_jwt"
        assert server.discovery_requests == 1
        assert [i.auth_method for i in server.issued] == ["private_key_jwt"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--workers", "0"),
        ("--token-concurrency", "0"),
        ("--token-concurrency", "-2"),
        ("--token-rate", "0"),
        ("--token-rate", "nan"),
        ("--event-rate", "-1"),
    ],
)
def test_run_refuses_values_that_would_stop_the_operator_at_startup(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", f"{flag}={value}"])
    assert exc.value.code == 2  # argparse's usage error, before kopf starts
    assert flag in capsys.readouterr().err


def test_run_parses_the_tuning_flags() -> None:
    args = cli._parser().parse_args(
        ["run", "--token-concurrency=2", "--event-rate=2.5", "--token-rate=7"]
    )
    assert (args.token_concurrency, args.event_rate, args.token_rate) == (2, 2.5, 7.0)
