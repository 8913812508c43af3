"""`tokensync fetch` with each grant of spec.grant (decision 0047), from flags and from a
ClientCredential file, against the real token server over loopback."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support import tokenserver
from support.grantkeys import KEY_PEM, SUBJECT_ISSUER, SUBJECT_KEY, public_jwks, subject_token
from support.tokenserver import TokenServer
from tokensync import cli

LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client(
            "bearer",
            jwks=public_jwks(),
            auth_methods=["private_key_jwt"],
            grant_types=[tokenserver.JWT_BEARER_GRANT],
        )
        running.add_client(
            "exchanger",
            auth_methods=["none"],
            grant_types=[tokenserver.TOKEN_EXCHANGE_GRANT],
            subject_issuer=(SUBJECT_ISSUER, lambda: public_jwks(SUBJECT_KEY, "sa")),
        )
        running.add_client("custom", "custom-secret", grant_types=[tokenserver.CUSTOM_GRANT_TYPE])
        yield running


def fetch(server: TokenServer, *args: str) -> list[str]:
    return ["fetch", "--token-url", server.url, "--allow-insecure-http", LOOPBACK, *args]


def test_fetch_jwt_bearer(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)
    key = tmp_path / "key.pem"
    key.write_text(KEY_PEM)
    argv = fetch(server, "--client-id", "bearer", "--grant-type", "jwt_bearer")
    code = cli.main([*argv, "--private-key", str(key)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["auth_method"] == "none"
    assert server.issued[-1].grant_type == tokenserver.JWT_BEARER_GRANT
    # Without the key that signs the assertion: refused before any request.
    requests = server.requests
    assert cli.main(argv) == 2
    assert "--private-key" in capsys.readouterr().err
    assert server.requests == requests


def test_fetch_token_exchange(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)
    subject = subject_token()
    monkeypatch.setenv("SUBJECT", subject)
    argv = fetch(
        server,
        "--client-id",
        "exchanger",
        "--grant-type",
        "token_exchange",
        "--requested-token-type",
        tokenserver.TOKEN_TYPE_ACCESS_TOKEN,
        "--audience",
        "https://reports.example.com",
    )
    code = cli.main([*argv, "--subject-token-env", "SUBJECT"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert subject not in captured.out
    issued = server.issued[-1]
    assert issued.grant_type == tokenserver.TOKEN_EXCHANGE_GRANT
    assert issued.grant_params["audience"] == ["https://reports.example.com"]
    assert issued.grant_params["requested_token_type"] == [tokenserver.TOKEN_TYPE_ACCESS_TOKEN]
    with pytest.raises(SystemExit, match="--subject-token-env"):
        cli.main(argv)


def test_fetch_token_exchange_from_a_file(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file's ServiceAccount is the cluster's business: fetch takes the subject token
    from --subject-token-env, and the file's token types."""
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)
    monkeypatch.setenv("SUBJECT", subject_token())
    manifest = write(
        tmp_path,
        {
            "tokenURL": server.url,
            "clientID": "exchanger",
            "grant": {
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectServiceAccountRef": {"name": "billing", "audience": "sts"},
                    "requestedTokenType": tokenserver.TOKEN_TYPE_ACCESS_TOKEN,
                },
            },
        },
    )
    code = cli.main(
        [
            "fetch",
            "--file",
            manifest,
            "--allow-insecure-http",
            LOOPBACK,
            "--subject-token-env",
            "SUBJECT",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert server.issued[-1].grant_params["requested_token_type"] == [
        tokenserver.TOKEN_TYPE_ACCESS_TOKEN
    ]


def test_fetch_custom_grant_from_a_file(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "custom-secret")
    manifest = write(
        tmp_path,
        {
            "tokenURL": server.url,
            "clientID": "custom",
            "clientSecretRef": {"name": "unused-here"},
            "grant": {"type": "custom", "grantTypeURI": tokenserver.CUSTOM_GRANT_TYPE},
            "extraParams": {"account": "reporting"},
        },
    )
    code = cli.main(["fetch", "--file", manifest, "--allow-insecure-http", LOOPBACK])
    assert code == 0, capsys.readouterr().err
    assert server.issued[-1].grant_params == {"account": ["reporting"]}


def test_fetch_grant_flags_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "s")
    base = ["fetch", "--token-url", "https://login.example.com/t", "--client-id", "c"]
    with pytest.raises(SystemExit, match="grantTypeURI"):
        cli.main([*base, "--grant-type", "custom"])
    with pytest.raises(SystemExit, match="standard grant type"):
        cli.main([*base, "--grant-type", "custom", "--grant-type-uri", "password"])
    with pytest.raises(SystemExit, match="need --grant-type"):
        cli.main([*base, "--grant-type-uri", "urn:x:y"])
    with pytest.raises(SystemExit, match="is for --grant-type token_exchange"):
        cli.main([*base, "--subject-token-env", "X"])


def write(tmp_path: pathlib.Path, spec: dict[str, Any]) -> str:
    manifest = tmp_path / "cc.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": "x"},
                "spec": spec,
            }
        )
    )
    return str(manifest)
