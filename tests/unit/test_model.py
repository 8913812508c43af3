"""``parse_spec`` and ``parse_duration``: what a stored spec turns into, and what it refuses.

The CRD refuses most of these specs at admission; parse_spec is the second line for objects
stored before a schema change, so every refusal here names the same field the CRD would.
"""

from __future__ import annotations

import copy
import datetime
import fractions
import pathlib
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tokensync import model

CRD_PATH = (
    pathlib.Path(__file__).resolve().parents[2] / "crds" / "clientcredentials.tokensync.dev.yaml"
)
S = datetime.timedelta(seconds=1)
MINIMAL: dict[str, Any] = {
    "tokenURL": "https://login.example.com/oauth2/token",
    "clientSecretRef": {"name": "billing-oauth-client"},
}


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level fields replaced; ``None`` removes a field."""
    spec = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def ref(**fields: Any) -> dict[str, Any]:
    return {"name": "billing-oauth-client", **fields}


# -- accepted specs -------------------------------------------------------------------------


def test_minimal_spec_gets_the_defaults() -> None:
    parsed = model.parse_spec(MINIMAL, name="billing-api")
    assert parsed == model.CredentialSpec(
        request=model.TokenRequest(token_url="https://login.example.com/oauth2/token"),
        secret_ref=model.SecretRef(name="billing-oauth-client"),
        client_id=None,
        refresh=model.RefreshPolicy(),
        target=model.TargetSpec(name="billing-api-token"),
    )
    assert parsed.request.auth_method is model.AuthMethod.AUTO
    assert parsed.secret_ref.client_id_key == "client_id"
    assert parsed.secret_ref.client_secret_key == "client_secret"


def test_full_spec() -> None:
    spec = {
        "tokenURL": "https://login.example.com/oauth2/token",
        "clientSecretRef": {"name": "oauth-client", "clientIDKey": "id", "clientSecretKey": "pw"},
        "clientID": "reporting-service",
        "authMethod": "client_secret_post",
        "scopes": ["reports.read", "https://graph.microsoft.com/.default"],
        "audience": "https://reports.example.com",
        "resources": ["https://reports.example.com", "https://exports.example.com/v2"],
        "extraParams": {"tenant": "acme", "requested_token_use": "access"},
        "refresh": {"renewBefore": "10m", "minInterval": "1m", "defaultLifetime": "30m"},
        "target": {
            "name": "reporting-api-bearer",
            "labels": {"team": "data", "app.kubernetes.io/name": "reporting"},
            "annotations": {"reloader.stakater.com/match": "true"},
        },
    }
    assert model.parse_spec(spec, name="reporting-api") == model.CredentialSpec(
        request=model.TokenRequest(
            token_url="https://login.example.com/oauth2/token",
            auth_method=model.AuthMethod.CLIENT_SECRET_POST,
            scopes=("reports.read", "https://graph.microsoft.com/.default"),
            audience="https://reports.example.com",
            resources=("https://reports.example.com", "https://exports.example.com/v2"),
            # sorted, so that the same map always gives the same request
            extra_params=(("requested_token_use", "access"), ("tenant", "acme")),
        ),
        secret_ref=model.SecretRef(name="oauth-client", client_id_key="id", client_secret_key="pw"),
        client_id="reporting-service",
        refresh=model.RefreshPolicy(
            renew_before=600 * S, min_interval=60 * S, default_lifetime=1800 * S
        ),
        target=model.TargetSpec(
            name="reporting-api-bearer",
            labels=(("app.kubernetes.io/name", "reporting"), ("team", "data")),
            annotations=(("reloader.stakater.com/match", "true"),),
        ),
    )


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        pytest.param(
            with_(refresh={"renewBeforePercentage": 1}),
            lambda p: p.refresh.renew_before_percentage == 1.0,
            id="percentage-1",
        ),
        pytest.param(
            with_(refresh={"renewBeforePercentage": 99}),
            lambda p: p.refresh.renew_before_percentage == 99.0,
            id="percentage-99",
        ),
        pytest.param(
            with_(authMethod=None),
            lambda p: p.request.auth_method is model.AuthMethod.AUTO,
            id="auth-method-absent",
        ),
        pytest.param(
            with_(authMethod="client_secret_json"),
            lambda p: p.request.auth_method is model.AuthMethod.CLIENT_SECRET_JSON,
            id="auth-method-json",
        ),
        pytest.param(
            with_(refresh={"renewBefore": "0s"}),
            lambda p: p.refresh.renew_before == datetime.timedelta(0),
            id="renew-at-expiry",
        ),
        pytest.param(
            with_(refresh={"minInterval": "87600h"}),
            lambda p: p.refresh.min_interval == model.MAX_DURATION,
            id="longest-duration",
        ),
        pytest.param(
            with_(scopes=["!#[]~", "a.b:c/d"]),
            lambda p: p.request.scopes == ("!#[]~", "a.b:c/d"),
            id="scope-edge-characters",
        ),
        pytest.param(
            # The CRD forbids the managed-by *label* only; the annotation is not tokensync's.
            with_(target={"annotations": {"app.kubernetes.io/managed-by": "argocd"}}),
            lambda p: p.target.annotations == (("app.kubernetes.io/managed-by", "argocd"),),
            id="managed-by-annotation",
        ),
        pytest.param(
            with_(target={"labels": {"example.tokensync.dev/x": "y"}}),
            lambda p: p.target.labels == (("example.tokensync.dev/x", "y"),),
            id="label-prefix-only-exact",
        ),
        pytest.param(
            with_(extraParams={"resource_hint": "x", "Scope": "y"}),
            lambda p: dict(p.request.extra_params) == {"resource_hint": "x", "Scope": "y"},
            id="extra-params-near-reserved",
        ),
        pytest.param(
            with_(target={}),
            lambda p: p.target.name == "billing-api-token",
            id="empty-target-object",
        ),
    ],
)
def test_accepted(spec: dict[str, Any], check: Any) -> None:
    assert check(model.parse_spec(spec, name="billing-api"))


# -- refused specs --------------------------------------------------------------------------

LONG_NAME = "a" * 248  # "-token" makes it 254, one more than a Secret name may have

REFUSED = [
    # (id, spec, metadata.name, field, fragment of the message)
    ("token-url-missing", with_(tokenURL=None), "x", "spec.tokenURL", "exactly one of"),
    ("token-url-empty", with_(tokenURL=""), "x", "spec.tokenURL", "non-empty"),
    ("token-url-not-string", with_(tokenURL=3), "x", "spec.tokenURL", "non-empty string"),
    ("auth-method-unknown", with_(authMethod="mtls"), "x", "spec.authMethod", "one of auto"),
    ("auth-method-list", with_(authMethod=["auto"]), "x", "spec.authMethod", "one of"),
    ("ref-missing", with_(clientSecretRef=None), "x", "spec.clientSecretRef", "is required"),
    ("ref-not-object", with_(clientSecretRef="c"), "x", "spec.clientSecretRef", "an object"),
    ("ref-name-missing", with_(clientSecretRef={}), "x", "spec.clientSecretRef.name", "required"),
    (
        "ref-name-empty",
        with_(clientSecretRef={"name": ""}),
        "x",
        "spec.clientSecretRef.name",
        "non-empty string",
    ),
    (
        "ref-name-invalid",
        with_(clientSecretRef={"name": "Billing_Client"}),
        "x",
        "spec.clientSecretRef.name",
        "not a valid Secret name",
    ),
    (
        "client-id-key-empty",
        with_(clientSecretRef=ref(clientIDKey="")),
        "x",
        "spec.clientSecretRef.clientIDKey",
        "non-empty string",
    ),
    (
        "client-secret-key-empty",
        with_(clientSecretRef=ref(clientSecretKey="")),
        "x",
        "spec.clientSecretRef.clientSecretKey",
        "non-empty string",
    ),
    (
        "client-secret-key-not-string",
        with_(clientSecretRef=ref(clientSecretKey=7)),
        "x",
        "spec.clientSecretRef.clientSecretKey",
        "non-empty string",
    ),
    ("client-id-empty", with_(clientID=""), "x", "spec.clientID", "non-empty string"),
    ("audience-empty", with_(audience=""), "x", "spec.audience", "non-empty string"),
    ("target-not-object", with_(target="t"), "x", "spec.target", "must be an object"),
    ("target-name-empty", with_(target={"name": ""}), "x", "spec.target.name", "non-empty"),
    (
        "target-name-invalid",
        with_(target={"name": "Billing"}),
        "x",
        "spec.target.name",
        "not a valid Secret name",
    ),
    (
        "target-name-trailing-newline",
        with_(target={"name": "billing\n"}),
        "x",
        "spec.target.name",
        "not a valid Secret name",
    ),
    (
        "default-target-name-too-long",
        MINIMAL,
        LONG_NAME,
        "spec.target.name",
        "not a valid Secret name",
    ),
    (
        "target-is-client-secret",
        with_(target={"name": "billing-oauth-client"}),
        "x",
        "spec.target.name",
        "must not be a Secret holding client credentials",
    ),
    (
        "default-target-is-client-secret",
        with_(clientSecretRef={"name": "billing-token"}),
        "billing",
        "spec.target.name",
        "must not be a Secret holding client credentials",
    ),
    (
        "label-managed-by",
        with_(target={"labels": {"app.kubernetes.io/managed-by": "me"}}),
        "x",
        "spec.target.labels",
        "must not set app.kubernetes.io/managed-by",
    ),
    (
        "label-reserved-prefix",
        with_(target={"labels": {"tokensync.dev/credential": "other"}}),
        "x",
        "spec.target.labels",
        "must not set tokensync.dev/credential",
    ),
    (
        "annotation-reserved-prefix",
        with_(target={"annotations": {"tokensync.dev/expires-at": "never"}}),
        "x",
        "spec.target.annotations",
        "keys under tokensync.dev/",
    ),
    (
        "labels-not-strings",
        with_(target={"labels": {"team": 1}}),
        "x",
        "spec.target.labels",
        "map of strings",
    ),
    ("scopes-not-list", with_(scopes="a b"), "x", "spec.scopes", "list of non-empty strings"),
    ("scope-empty", with_(scopes=["a", ""]), "x", "spec.scopes", "list of non-empty strings"),
    ("scope-space", with_(scopes=["a b"]), "x", "spec.scopes[0]", "not a scope token"),
    ("scope-tab", with_(scopes=["ok", "a\tb"]), "x", "spec.scopes[1]", "not a scope token"),
    ("scope-newline", with_(scopes=["a\n"]), "x", "spec.scopes[0]", "not a scope token"),
    ("scope-quote", with_(scopes=['a"b']), "x", "spec.scopes[0]", "double quotes"),
    ("scope-backslash", with_(scopes=["a\\b"]), "x", "spec.scopes[0]", "backslashes"),
    ("scope-non-ascii", with_(scopes=["lecture.é"]), "x", "spec.scopes[0]", "ASCII"),
    ("resources-not-list", with_(resources="https://a"), "x", "spec.resources", "list"),
    (
        "extra-params-not-strings",
        with_(extraParams={"n": 1}),
        "x",
        "spec.extraParams",
        "map of strings",
    ),
    ("refresh-not-object", with_(refresh="5m"), "x", "spec.refresh", "must be an object"),
    (
        "renew-before-invalid",
        with_(refresh={"renewBefore": "5 minutes"}),
        "x",
        "spec.refresh.renewBefore",
        "invalid duration",
    ),
    (
        "renew-before-non-ascii-digits",
        with_(refresh={"renewBefore": "\u0663s"}),  # ARABIC-INDIC DIGIT THREE
        "x",
        "spec.refresh.renewBefore",
        "invalid duration",
    ),
    (
        "renew-before-too-long",
        with_(refresh={"renewBefore": "87600h1ms"}),
        "x",
        "spec.refresh.renewBefore",
        "at most 87600h",
    ),
    (
        "renew-before-huge",
        with_(refresh={"renewBefore": "9" * 60 + "h"}),
        "x",
        "spec.refresh.renewBefore",
        "at most 87600h",
    ),
    *[
        (
            f"percentage-{value!r}",
            with_(refresh={"renewBeforePercentage": value}),
            "x",
            "spec.refresh.renewBeforePercentage",
            fragment,
        )
        for value, fragment in [
            (0, "between 1 and 99"),
            (100, "between 1 and 99"),
            (-5, "between 1 and 99"),
            (20.5, "integer"),
            (20.0, "integer"),
            (True, "integer"),
            ("20", "integer"),
        ]
    ],
    (
        "renew-before-and-percentage",
        with_(refresh={"renewBefore": "5m", "renewBeforePercentage": 20}),
        "x",
        "spec.refresh",
        "not both",
    ),
    (
        "min-interval-invalid",
        with_(refresh={"minInterval": "1d"}),
        "x",
        "spec.refresh.minInterval",
        "invalid duration",
    ),
    (
        "default-lifetime-zero",
        with_(refresh={"defaultLifetime": "0s"}),
        "x",
        "spec.refresh.defaultLifetime",
        "must be positive",
    ),
    (
        "default-lifetime-below-a-microsecond",
        with_(refresh={"defaultLifetime": "0.0000001s"}),
        "x",
        "spec.refresh.defaultLifetime",
        "must be positive",
    ),
]


@pytest.mark.parametrize(
    ("spec", "name", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_refused_naming_the_field(
    spec: dict[str, Any], name: str, field: str, fragment: str
) -> None:
    with pytest.raises(model.SpecError) as caught:
        model.parse_spec(spec, name=name)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("key", "use"),
    [
        ("grant_type", "grant_type=client_credentials"),
        ("client_id", "spec.clientID"),
        ("client_secret", "spec.clientSecretRef"),
        ("client_assertion", "spec.authMethod"),
        ("client_assertion_type", "spec.authMethod"),
        ("scope", "spec.scopes"),
        ("audience", "spec.audience"),
        ("resource", "spec.resources"),
    ],
)
def test_extra_params_must_not_set_reserved_parameters(key: str, use: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        model.parse_spec(with_(extraParams={"tenant": "acme", key: "x"}), name="x")
    assert caught.value.field == "spec.extraParams"
    assert f"must not set {key}:" in str(caught.value)
    assert use in str(caught.value)


def test_reserved_extra_params_are_the_ones_the_crd_refuses() -> None:
    (crd,) = [doc for doc in yaml.safe_load_all(CRD_PATH.read_text()) if doc]
    (version,) = crd["spec"]["versions"]
    extra = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["extraParams"]
    rules = [rule["rule"] for rule in extra["x-kubernetes-validations"]]
    refused = {m.group(1) for r in rules if (m := re.fullmatch(r"!\('(\w+)' in self\)", r))}
    assert refused == set(model.RESERVED_EXTRA_PARAMS)


# -- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30 * S),
        ("5m", 300 * S),
        ("1h", 3600 * S),
        ("1h30m", 5400 * S),
        ("250ms", datetime.timedelta(milliseconds=250)),
        ("1.5h", 5400 * S),
        ("0s", datetime.timedelta(0)),
        ("1h0m0.5s", 3600.5 * S),
        ("30s1h", 3630 * S),  # Go accepts any order, and so do we
        ("1m1ms", datetime.timedelta(minutes=1, milliseconds=1)),
        ("0.1s", datetime.timedelta(microseconds=100_000)),
        ("0.000001s", datetime.timedelta(microseconds=1)),
        ("007s", 7 * S),
        ("87600h", model.MAX_DURATION),
    ],
)
def test_parse_duration_table(text: str, expected: datetime.timedelta) -> None:
    assert model.parse_duration(text, field="f") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "30",
        "-5m",
        "+5m",
        "1d",
        "1us",
        "5M",
        "5 m",
        " 5m",
        "5m ",
        "1h\n",
        "m",
        ".5s",
        "1.s",
        "1e3s",
        "1_000s",
        "\u0663s",  # ARABIC-INDIC DIGIT THREE
        "\uff15m",  # FULLWIDTH DIGIT FIVE
        "87600h1ms",
        "9" * 400 + "h",
        30,
        None,
        ["5m"],
    ],
    ids=repr,
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(model.SpecError) as caught:
        model.parse_duration(value, field="spec.refresh.minInterval")
    assert caught.value.field == "spec.refresh.minInterval"


UNIT_MICROSECONDS = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}
# Digits after the point that still land on a whole microsecond, so the sum is exact.
FRACTION_DIGITS = {"h": 6, "m": 6, "s": 6, "ms": 3}


@st.composite
def duration_parts(draw: st.DrawFn) -> tuple[str, int]:
    """One ``<number><unit>`` part and its length in microseconds."""
    unit = draw(st.sampled_from(sorted(UNIT_MICROSECONDS)))
    whole = draw(st.integers(min_value=0, max_value=10_000))
    digits = draw(st.integers(min_value=0, max_value=FRACTION_DIGITS[unit]))
    fraction = draw(st.integers(min_value=0, max_value=10**digits - 1))
    text = f"{whole}.{fraction:0{digits}d}{unit}" if digits else f"{whole}{unit}"
    micros = fractions.Fraction(whole) + fractions.Fraction(fraction, 10**digits)
    micros *= UNIT_MICROSECONDS[unit]
    assert micros.denominator == 1
    return text, int(micros)


@given(parts=st.lists(duration_parts(), min_size=1, max_size=6))
def test_parse_duration_sums_its_parts_exactly(parts: list[tuple[str, int]]) -> None:
    text = "".join(part for part, _ in parts)
    expected = datetime.timedelta(microseconds=sum(micros for _, micros in parts))
    assert model.parse_duration(text, field="f") == expected


CRD_DURATION = r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+"


def parse_or_message(text: str) -> datetime.timedelta | str:
    try:
        return model.parse_duration(text, field="f")
    except model.SpecError as exc:
        return str(exc)


@given(text=st.from_regex(CRD_DURATION, fullmatch=True))
def test_what_the_crd_admits_parses_or_is_too_long(text: str) -> None:
    result = parse_or_message(text)
    if isinstance(result, str):
        assert "at most 87600h" in result
    else:
        assert datetime.timedelta(0) <= result <= model.MAX_DURATION


@given(text=st.text(max_size=12))
def test_what_the_crd_refuses_parse_duration_refuses(text: str) -> None:
    if not re.fullmatch(CRD_DURATION, text):
        with pytest.raises(model.SpecError):
            model.parse_duration(text, field="f")
