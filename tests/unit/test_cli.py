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

#: The token servers listen on loopback, which tokensync refuses unless allowed.
LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"


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
            LOOPBACK,
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
    code = cli.main(
        ["fetch", "--file", str(manifest), "--allow-insecure-http", "--show-token", LOOPBACK]
    )
    meta = json.loads(capsys.readouterr().out)
    assert code == 0
    assert server.verify(meta["access_token"])


def test_fetch_refuses_http_without_opt_in_and_reports_errors(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "wrong-secret")
    fetch = ["fetch", "--token-url", server.url, "--client-id", "cli-client"]
    assert cli.main([*fetch, LOOPBACK]) == 1
    assert "TokenURLRefused" in capsys.readouterr().err
    code = cli.main([*fetch, "--allow-insecure-http", LOOPBACK])
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
                LOOPBACK,
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
        ("--kube-workers", "0"),
        ("--token-concurrency", "0"),
        ("--token-concurrency", "-2"),
        ("--token-rate", "0"),
        ("--token-rate", "nan"),
        ("--event-rate", "-1"),
        ("--refresh-port", "-1"),
        ("--refresh-port", "65536"),
    ],
)
def test_run_refuses_values_that_would_stop_the_operator_at_startup(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", f"{flag}={value}"])
    assert exc.value.code == 2  # argparse's usage error, before kopf starts
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--lease-duration=10", "--renew-deadline=10"], "--renew-deadline"),
        (["--renew-deadline=2", "--retry-period=2"], "--retry-period"),
        (["--shards=0"], "--shards"),
        (["--lease-name=Not_A_Name"], "--lease-name"),
    ],
)
def test_run_refuses_lease_timings_client_go_would_refuse(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", *flags])
    assert exc.value.code == 2
    assert complaint in capsys.readouterr().err


def test_run_parses_the_lease_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "tokensync-7d9f-abcde")
    args = cli._parser().parse_args(
        ["run", "--leader-elect", "--lease-namespace=ops", "--shards=4"]
    )
    assert (args.leader_elect, args.lease_namespace, args.shards) == (True, "ops", 4)
    assert args.identity == "tokensync-7d9f-abcde"
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15.0, 10.0, 2.0)


def test_run_parses_the_tuning_flags() -> None:
    args = cli._parser().parse_args(
        ["run", "--token-concurrency=2", "--event-rate=2.5", "--token-rate=7"]
    )
    assert (args.token_concurrency, args.event_rate, args.token_rate) == (2, 2.5, 7.0)


# -- the private network allowance (issue 14 section 4, decision 0037) ----------------------


def test_fetch_refuses_loopback_without_the_allowance_and_sends_nothing(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The literal address and a name that resolves to it: refused before any request."""
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    for url in (server.url, server.url.replace("127.0.0.1", "localhost")):
        code = cli.main(
            ["fetch", "--token-url", url, "--client-id", "cli-client", "--allow-insecure-http"]
        )
        err = capsys.readouterr().err
        assert code == 1
        assert "PrivateNetworkRefused" in err
        assert "--allow-private-network" in err
    assert server.requests == 0


def test_fetch_with_the_allowance_for_a_name(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host entry allows that name and the private addresses it resolves to."""
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    url = server.url.replace("127.0.0.1", "localhost")
    code = cli.main(
        [
            "fetch",
            *("--token-url", url, "--client-id", "cli-client"),
            *("--allow-insecure-http", "--allow-private-network=localhost"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert len(server.issued) == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["127.0.0.0/8,::1"], ["127.0.0.0/8", "::1"]),
        (
            ["10.0.0.0/8", "keycloak.auth.svc.cluster.local"],
            ["10.0.0.0/8", "keycloak.auth.svc.cluster.local"],
        ),
        (["*.corp.example, 192.168.1.7"], ["*.corp.example", "192.168.1.7"]),
        ([""], []),
    ],
)
def test_run_parses_the_private_network_allowance(values: list[str], expected: list[str]) -> None:
    args = cli._parser().parse_args(["run", *(f"--allow-private-network={v}" for v in values)])
    assert args.private_networks == expected


@pytest.mark.parametrize(
    "value", ["169.254.0.0/16", "169.254.169.254", "fe80::/64", "metadata.google.internal", "a b"]
)
def test_run_refuses_an_allowance_that_cannot_be(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Metadata and link-local addresses stay refused: saying otherwise is a startup error."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", f"--allow-private-network={value}"])
    assert exc.value.code == 2
    assert "--allow-private-network" in capsys.readouterr().err
