"""`tokensync fetch --render`: a ClientCredential's target shape checked without a cluster,
against the real loopback token server (decision 0040)."""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.tokenserver import TokenServer
from tokensync import cli

LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("cli-client", "cli-secret")
        yield running


def manifest(tmp_path: pathlib.Path, server: TokenServer, target: dict[str, Any]) -> str:
    path = tmp_path / "cc.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": "x"},
                "spec": {
                    "tokenURL": server.url,
                    "clientID": "cli-client",
                    "clientSecretRef": {"name": "unused-here"},
                    "target": target,
                },
            }
        )
    )
    return str(path)


def fetch(path: str, *extra: str) -> list[str]:
    return ["fetch", "--file", path, "--allow-insecure-http", LOOPBACK, *extra]


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")


def test_render_prints_the_data_a_template_gives(
    server: TokenServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(
        tmp_path,
        server,
        {"template": {"data": {"token": "{{ access_token }}", "in": "{{ expires_in }}"}}},
    )
    assert cli.main(fetch(path, "--render")) == 0
    out = json.loads(capsys.readouterr().out)
    (issued,) = server.issued
    assert out["secret"]["type"] == "Opaque"
    assert out["secret"]["data"]["token"] == issued.access_token
    assert int(out["secret"]["data"]["in"]) in (599, 600)  # expires_in, whole seconds
    assert set(out["secret"]["data"]) == {"token", "in"}
    assert server.verify(out["secret"]["data"]["token"])
    assert "access_token" not in out  # the token alone still needs --show-token


def test_render_prints_a_dockerconfigjson(
    server: TokenServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {"type": "kubernetes.io/dockerconfigjson", "dockerConfig": {"registry": "r.example"}}
    assert cli.main(fetch(manifest(tmp_path, server, target), "--render")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["secret"]["type"] == "kubernetes.io/dockerconfigjson"
    entry = json.loads(out["secret"]["data"][".dockerconfigjson"])["auths"]["r.example"]
    (issued,) = server.issued
    assert base64.b64decode(entry["auth"]).decode() == f"oauth2accesstoken:{issued.access_token}"


def test_render_of_the_default_shape(
    server: TokenServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(fetch(manifest(tmp_path, server, {}), "--render")) == 0
    data = json.loads(capsys.readouterr().out)["secret"]["data"]
    assert set(data) == {"access_token", "token_type", "expires_at", "authorization"}


def test_a_broken_template_is_reported_before_any_request(
    server: TokenServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, server, {"template": {"data": {"token": "{{ acess_token }}"}}})
    assert cli.main(fetch(path, "--render")) == 1
    err = capsys.readouterr().err
    assert "TemplateFailed" in err
    assert "spec.target.template.data[token]" in err
    assert "'acess_token' is undefined" in err
    assert server.issued == []  # nothing was fetched for it


def test_a_template_failing_with_the_real_token_shows_the_error_to_its_holder(
    server: TokenServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Renders with the placeholder token (whose JWT header says alg none), not with the
    # server's tokens: the lookup fails, and its error quotes what it looked up.
    lookup = "{{ {'eyJhbGciOiJub25lIn0': 'ok'}[access_token[:19]] }}"
    path = manifest(tmp_path, server, {"template": {"data": {"k": lookup}}})
    assert cli.main(fetch(path, "--render")) == 1
    err = capsys.readouterr().err
    (issued,) = server.issued
    assert f"has no attribute '{issued.access_token[:19]}'" in err


def test_render_needs_a_file(server: TokenServer) -> None:
    with pytest.raises(SystemExit, match="--render needs --file"):
        cli.main(
            ["fetch", "--token-url", server.url, "--client-id", "cli-client", "--render", LOOPBACK]
        )
