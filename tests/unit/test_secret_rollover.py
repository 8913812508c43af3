"""Client secret rollover (decision 0045): fallback keys, tried on invalid_client against the
real token server, what status and Events say, and `tokensync fetch --fallback-secret-env`."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.tokenserver import TokenServer
from tokensync import cli, failures, model, oauth, outcome, parsing, progress, sources

LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"
NEW, OLD = "the-new-secret-3b8e", "the-old-secret-91c2"


def parse(ref: dict[str, Any]) -> model.ClientCredentialSpec:
    return parsing.parse_spec(
        {"tokenURL": "https://login.example.com/t", "clientSecretRef": {"name": "c", **ref}},
        name="x",
    )


def test_parse_spec_reads_the_fallbacks_in_order() -> None:
    spec = parse({"clientSecretKey": "new", "fallbackClientSecretKeys": ["old", "older"]})
    assert spec.secret_ref == model.SecretRef(
        name="c", client_secret_key="new", fallback_client_secret_keys=("old", "older")
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"fallbackClientSecretKeys": ["a", "b", "c"]}, "must have at most 2 items"),
        ({"fallbackClientSecretKeys": ["a", "a"]}, "each key once, and not clientSecretKey"),
        ({"fallbackClientSecretKeys": ["client_secret"]}, "each key once"),
        ({"fallbackClientSecretKeys": ["a/b"]}, "not a valid Secret key"),
        ({"fallbackClientSecretKeys": "old"}, "must be a list"),
    ],
)
def test_parse_spec_refuses(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(model.SpecError, match=r"spec\.clientSecretRef\.fallbackClientSecretKeys"):
        parse(ref)
    with pytest.raises(model.SpecError, match=message):
        parse(ref)


def client_secret(data: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"labels": {model.CLIENT_SECRET_LABEL: "true"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def test_material_holds_the_fallbacks_present_each_value_once() -> None:
    spec = parse({"fallbackClientSecretKeys": ["gone", "old"]})
    found = {"c": client_secret({"client_id": "app", "client_secret": NEW, "old": OLD})}
    material = sources.auth_material(found, spec=spec)
    assert (material.client_secret, material.client_secret_key) == (NEW, "client_secret")
    assert material.fallback_secrets == (("old", OLD),)  # "gone" is not in the Secret
    assert OLD not in repr(material)
    assert NEW not in repr(material)
    same = {"c": client_secret({"client_id": "app", "client_secret": NEW, "old": NEW})}
    assert sources.auth_material(same, spec=spec).fallback_secrets == ()


# -- against the real token server ---------------------------------------------------------


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("roll", OLD, auth_methods=("client_secret_basic", "client_secret_post"))
        yield running


def material(*fallbacks: tuple[str, str]) -> model.ClientAuthMaterial:
    return model.ClientAuthMaterial(
        "roll", NEW, client_secret_key="client_secret", fallback_secrets=fallbacks
    )


async def fetch(server: TokenServer, credentials: model.ClientAuthMaterial) -> Any:
    async with httpx.AsyncClient() as client:
        return await oauth.fetch_token(
            client,
            request=model.TokenRequest(token_url=server.url),
            credentials=credentials,
            default_lifetime=datetime.timedelta(hours=1),
            now=lambda: datetime.datetime.now(datetime.UTC),
        )


async def test_the_old_secret_works_while_the_new_one_is_refused(server: TokenServer) -> None:
    result = await fetch(server, material(("previous", OLD)))
    assert (result.client_secret_key, result.refused_keys) == ("previous", ("client_secret",))
    assert result.auth_method is model.AuthMethod.CLIENT_SECRET_BASIC
    # auto: Basic and the form with the new secret, then Basic with the old one.
    assert server.requests == 3


async def test_the_new_secret_is_used_once_the_server_has_it(server: TokenServer) -> None:
    server.set_secret("roll", NEW)
    result = await fetch(server, material(("previous", OLD)))
    assert (result.client_secret_key, result.refused_keys) == ("client_secret", ())
    assert server.requests == 1


async def test_every_secret_refused_is_invalid_client(server: TokenServer) -> None:
    server.set_secret("roll", "a-third-secret")
    with pytest.raises(failures.TokenError) as caught:
        await fetch(server, material(("previous", OLD), ("older", "x")))
    assert caught.value.reason is failures.Reason.INVALID_CLIENT
    assert server.requests == 6  # three keys, two methods each: bounded
    for secret in (NEW, OLD):
        assert secret not in str(caught.value)


async def test_methods_without_a_client_secret_are_not_repeated(server: TokenServer) -> None:
    server.set_secret("roll", "a-third-secret")
    with pytest.raises(failures.TokenError):
        async with httpx.AsyncClient() as client:
            await oauth.fetch_token(
                client,
                request=model.TokenRequest(token_url=server.url),
                credentials=dataclasses.replace(
                    material(("previous", OLD)), external_assertion="an.unsigned.token"
                ),
                default_lifetime=datetime.timedelta(hours=1),
                now=lambda: datetime.datetime.now(datetime.UTC),
                methods=[model.AuthMethod.WORKLOAD_IDENTITY, model.AuthMethod.CLIENT_SECRET_BASIC],
            )
    assert server.requests == 3  # the assertion once, Basic with each secret


# -- status and Events ---------------------------------------------------------------------

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)


def issued(key: str | None, refused: tuple[str, ...] = ()) -> progress.Issued:
    return progress.Issued(
        issued_at=T0,
        expires_at=T0 + datetime.timedelta(hours=1),
        refresh_at=T0 + datetime.timedelta(minutes=40),
        token_type="Bearer",
        scope=None,
        auth_method="client_secret_basic",
        target="x-token",
        policy=model.RefreshPolicy(),
        client_secret_key=key,
        refused_keys=refused,
    )


@pytest.mark.parametrize(
    ("previous", "token", "expected"),
    [
        (None, issued("client_secret"), []),
        ("client_secret", issued("client_secret"), []),
        (None, issued("previous", ("client_secret",)), [("Warning", "ClientSecretFallback")]),
        (
            "client_secret",
            issued("previous", ("client_secret",)),
            [("Warning", "ClientSecretFallback")],
        ),
        ("previous", issued("previous", ("client_secret",)), []),  # not at every refresh
        ("previous", issued("client_secret"), [("Normal", "ClientSecretKeyChanged")]),
        ("previous", issued(None), []),  # a method without a client secret
    ],
)
def test_an_event_when_the_key_in_use_changes(
    previous: str | None, token: progress.Issued, expected: list[tuple[str, str]]
) -> None:
    events = outcome.secret_key_events(previous, token)
    assert [(e.type, e.reason) for e in events] == expected


def test_status_names_the_key_and_a_restart_remembers_it() -> None:
    state = progress.State()
    attempt = progress.Attempt(generation=1, request=None, source_version="1")
    token = issued("previous", ("client_secret",))
    decision = outcome.decide(state, attempt, token, now=T0, draw=0.5)
    assert decision.status["clientSecretKey"] == "previous"
    (fallback,) = [e for e in decision.events if e.reason == "ClientSecretFallback"]
    assert "'client_secret'" in fallback.message
    assert "'previous'" in fallback.message
    restarted = progress.State.from_status({**decision.status})
    assert restarted.client_secret_key == "previous"
    again = outcome.decide(restarted, attempt, token, now=T0, draw=0.5)
    assert not [e for e in again.events if e.reason == "ClientSecretFallback"]


def test_fetch_tries_the_fallback_secrets_from_the_environment(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, NEW)
    monkeypatch.setenv("OLD_SECRET", OLD)
    code = cli.main(
        [
            "fetch",
            "--token-url",
            server.url,
            "--client-id",
            "roll",
            "--fallback-secret-env",
            "OLD_SECRET",
            "--allow-insecure-http",
            LOOPBACK,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    meta = json.loads(out)
    assert meta["client_secret_from"] == "OLD_SECRET"
    assert meta["refused_client_secrets_from"] == [cli.SECRET_ENV]
    assert OLD not in out
    assert NEW not in out
