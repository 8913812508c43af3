"""`tokensync fetch` with spec.responseMapping, against the real loopback token server
answering in a non-standard shape (``tokenserver.nested_answer``)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.tokenserver import TokenServer, nested_answer
from tokensync import cli

LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"
MAPPING = {
    "accessToken": "data.accessToken",
    "expiresAt": "data.expiresAt",
    "scope": "data.grants[0].scopes",
}


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("cli-client", "cli-secret", auth_methods=("client_secret_post",))
        running.reshape = nested_answer
        yield running


def manifest(tmp_path: pathlib.Path, url: str, mapping: dict[str, str]) -> pathlib.Path:
    path = tmp_path / "cc.yaml"
    spec: dict[str, Any] = {
        "tokenURL": url,
        "clientID": "cli-client",
        "clientSecretRef": {"name": "unused-here"},
        "authMethod": "client_secret_post",
        "scopes": ["read", "write"],
        "responseMapping": mapping,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": "x"},
                "spec": spec,
            }
        )
    )
    return path


def test_fetch_reads_a_nested_answer_through_the_file_s_mapping(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    path = manifest(tmp_path, server.url, MAPPING)
    code = cli.main(
        ["fetch", "--file", str(path), "--allow-insecure-http", "--show-token", LOOPBACK]
    )
    meta = json.loads(capsys.readouterr().out)
    assert code == 0
    assert server.verify(meta["access_token"])
    assert meta["token_type"] == "Bearer"
    assert meta["scope"] == "read write"
    # The earlier of expiresAt (whole seconds) and the JWT's exp.
    assert meta["lifetime_source"] in ("expires_at", "jwt_exp")
    assert 590 <= meta["lifetime_seconds"] <= 600


def test_fetch_mapping_flags_replace_the_file_s(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    path = manifest(tmp_path, server.url, {"accessToken": "wrong.place"})
    flags = [f"--response-mapping={key}={value}" for key, value in MAPPING.items()]
    code = cli.main(["fetch", "--file", str(path), "--allow-insecure-http", *flags, LOOPBACK])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["scope"] == "read write"


def test_fetch_names_the_path_that_found_nothing_and_not_the_body(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    path = manifest(tmp_path, server.url, {**MAPPING, "accessToken": "data.token"})
    code = cli.main(["fetch", "--file", str(path), "--allow-insecure-http", LOOPBACK])
    err = capsys.readouterr().err
    assert code == 1
    assert "BadResponse" in err
    assert "responseMapping.accessToken (data.token) found nothing" in err
    assert server.issued[-1].access_token not in err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("accessToken", "use FIELD=PATH"),
        ("token=data.t", "use FIELD=PATH with FIELD one of accessToken"),
        ("accessToken=data[*].t", "spec.responseMapping.accessToken: must be a path"),
    ],
)
def test_fetch_refuses_bad_mapping_flags_before_any_request(
    server: TokenServer, flag: str, message: str
) -> None:
    with pytest.raises(SystemExit, match=message.replace("[", r"\[")):
        cli.main(
            [
                "fetch",
                "--token-url",
                server.url,
                "--client-id",
                "cli-client",
                f"--response-mapping={flag}",
                LOOPBACK,
            ]
        )
    assert server.requests == 0
