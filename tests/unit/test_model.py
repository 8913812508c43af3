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

from tokensync import durations, model, parsing

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
    parsed = parsing.parse_spec(MINIMAL, name="billing-api")
    assert parsed == model.ClientCredentialSpec(
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
    assert parsing.parse_spec(spec, name="reporting-api") == model.ClientCredentialSpec(
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
    assert check(parsing.parse_spec(spec, name="billing-api"))


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
    # The bounds of decision 0031, the same as the CRD's (test_crd_matches_model.py).
    *[
        (f"{key}-{value}", with_(**{parent: {key: value}}), "x", f"spec.{parent}.{key}", message)
        for parent, key, value, message in [
            ("refresh", "defaultLifetime", "0s", "must be between 10s and 87600h"),
            ("refresh", "defaultLifetime", "0.0000001s", "must be between 10s and 87600h"),
            ("refresh", "defaultLifetime", "1ms", "must be between 10s and 87600h"),
            ("refresh", "defaultLifetime", "9.9999999s", "must be between 10s and 87600h"),
            ("refresh", "defaultLifetime", "100000h", "must be between 10s and 87600h"),
            ("refresh", "renewBefore", "100000h", "must be at most 87600h"),
            ("refresh", "minInterval", "0s", "must be between 1s and 87600h"),
            ("refresh", "minInterval", "999ms", "must be between 1s and 87600h"),
            ("clientAssertion", "lifetime", "2h", "must be between 10s and 1h"),
            ("clientAssertion", "lifetime", "9s", "must be between 10s and 1h"),
            ("clientAssertion", "lifetime", "1h0.000001s", "must be between 10s and 1h"),
        ]
    ],
]


@pytest.mark.parametrize(
    ("spec", "name", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_refused_naming_the_field(
    spec: dict[str, Any], name: str, field: str, fragment: str
) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name=name)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("key", "use"),
    [
        ("grant_type", "set spec.grant.type"),
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
        parsing.parse_spec(with_(extraParams={"tenant": "acme", key: "x"}), name="x")
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
    assert durations.parse(text, field="f") == expected


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
        durations.parse(value, field="spec.refresh.minInterval")
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
    assert durations.parse(text, field="f") == expected


CRD_DURATION = r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+"


def parse_or_message(text: str) -> datetime.timedelta | str:
    try:
        return durations.parse(text, field="f")
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
            durations.parse(text, field="f")


# -- client authentication without shared secrets ---------------------------------------------

ISSUER = "https://login.example.com/tenants/acme"
KEY_REF = {"name": "payments-signing-key"}
CERT_REF = {"name": "payments-client-tls"}
SA_REF = {"name": "payments", "audience": "api://AzureADTokenExchange"}


def keyless(**fields: Any) -> dict[str, Any]:
    """A spec with a token URL and a client ID but no credential material: add some."""
    return {"tokenURL": MINIMAL["tokenURL"], "clientID": "payments-service", **fields}


def test_issuer_url_instead_of_a_token_url() -> None:
    parsed = parsing.parse_spec(with_(tokenURL=None, issuerURL=ISSUER), name="billing-api")
    assert parsed.issuer_url == ISSUER
    assert parsed.request.token_url == ""  # discovery fills it in
    assert parsed.secret_ref == model.SecretRef(name="billing-oauth-client")


@pytest.mark.parametrize(
    "urls",
    [
        pytest.param({"tokenURL": MINIMAL["tokenURL"], "issuerURL": ISSUER}, id="both"),
        pytest.param({"tokenURL": None}, id="neither"),
    ],
)
def test_exactly_one_of_token_url_and_issuer_url(urls: dict[str, Any]) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(with_(**urls), name="x")
    assert caught.value.field == "spec.tokenURL"
    assert "exactly one of tokenURL and issuerURL" in str(caught.value)


@pytest.mark.parametrize("issuer", ["", 42, ["https://x"]])
def test_issuer_url_must_be_a_non_empty_string(issuer: object) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(with_(tokenURL=None, issuerURL=issuer), name="x")
    assert caught.value.field == "spec.issuerURL"


def test_every_kind_of_material_at_once() -> None:
    spec = with_(
        issuerURL=ISSUER,
        tokenURL=None,
        privateKeyRef={**KEY_REF, "key": "key.jwk", "certificateKey": "tls.crt"},
        clientCertificateRef=CERT_REF,
        serviceAccountRef=SA_REF,
        clientAssertion={
            "audience": "https://login.example.com/tenants/acme/v2",
            "algorithm": "PS256",
            "keyID": "key-2026",
            "lifetime": "90s",
        },
    )
    parsed = parsing.parse_spec(spec, name="billing-api")
    assert parsed.private_key_ref == model.PrivateKeyRef(
        name="payments-signing-key", key="key.jwk", certificate_key="tls.crt"
    )
    assert parsed.client_certificate_ref == "payments-client-tls"
    assert parsed.service_account_ref == model.ServiceAccountRef(
        name="payments", audience="api://AzureADTokenExchange"
    )
    assert parsed.request.assertion == model.AssertionOptions(
        audience="https://login.example.com/tenants/acme/v2",
        algorithm="PS256",
        key_id="key-2026",
        lifetime=datetime.timedelta(seconds=90),
    )
    assert parsed.secret_names == (
        "billing-oauth-client",
        "payments-signing-key",
        "payments-client-tls",
    )


def test_private_key_ref_defaults() -> None:
    parsed = parsing.parse_spec(keyless(privateKeyRef=KEY_REF), name="x")
    assert parsed.private_key_ref == model.PrivateKeyRef(
        name="payments-signing-key", key="tls.key", certificate_key=None
    )
    assert parsed.request.assertion == model.AssertionOptions()
    assert parsed.request.assertion.lifetime == datetime.timedelta(minutes=2)
    assert parsed.secret_ref is None
    assert parsed.client_id == "payments-service"


@pytest.mark.parametrize(
    ("material", "method"),
    [
        ({"privateKeyRef": KEY_REF}, "private_key_jwt"),
        ({"privateKeyRef": KEY_REF}, "auto"),
        ({"clientCertificateRef": CERT_REF}, "tls_client_auth"),
        ({"clientCertificateRef": CERT_REF}, "self_signed_tls_client_auth"),
        ({"clientCertificateRef": CERT_REF}, "auto"),
        ({"serviceAccountRef": SA_REF}, "workload_identity"),
        ({"serviceAccountRef": SA_REF}, "auto"),
        ({"clientSecretRef": {"name": "c"}}, "client_secret_jwt"),
    ],
)
def test_each_method_with_its_material_is_accepted(material: dict[str, Any], method: str) -> None:
    parsed = parsing.parse_spec(keyless(authMethod=method, **material), name="x")
    assert parsed.request.auth_method == method


@pytest.mark.parametrize(
    ("method", "material", "field"),
    [
        ("private_key_jwt", {"clientSecretRef": {"name": "c"}}, "spec.privateKeyRef"),
        ("private_key_jwt", {"clientCertificateRef": CERT_REF}, "spec.privateKeyRef"),
        ("client_secret_jwt", {"privateKeyRef": KEY_REF}, "spec.clientSecretRef"),
        ("client_secret_basic", {"privateKeyRef": KEY_REF}, "spec.clientSecretRef"),
        ("client_secret_post", {"serviceAccountRef": SA_REF}, "spec.clientSecretRef"),
        ("client_secret_json", {"clientCertificateRef": CERT_REF}, "spec.clientSecretRef"),
        ("tls_client_auth", {"privateKeyRef": KEY_REF}, "spec.clientCertificateRef"),
        ("self_signed_tls_client_auth", {"serviceAccountRef": SA_REF}, "spec.clientCertificateRef"),
        ("workload_identity", {"privateKeyRef": KEY_REF}, "spec.serviceAccountRef"),
        ("workload_identity", {"clientSecretRef": {"name": "c"}}, "spec.serviceAccountRef"),
    ],
)
def test_each_method_requires_its_material(
    method: str, material: dict[str, Any], field: str
) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(authMethod=method, **material), name="x")
    assert caught.value.field == field
    assert f"is required with authMethod {method}" in str(caught.value)


def test_auto_without_any_material_is_refused() -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(), name="x")
    assert caught.value.field == "spec.clientSecretRef"
    for alternative in (
        "spec.privateKeyRef",
        "spec.clientCertificateRef",
        "spec.serviceAccountRef",
    ):
        assert alternative in str(caught.value)


@pytest.mark.parametrize(
    "material",
    [{"privateKeyRef": KEY_REF}, {"clientCertificateRef": CERT_REF}, {"serviceAccountRef": SA_REF}],
)
def test_client_id_is_required_without_a_client_secret_ref(material: dict[str, Any]) -> None:
    spec = keyless(**material)
    del spec["clientID"]
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name="x")
    assert caught.value.field == "spec.clientID"
    # With a client Secret, the client ID may come from it instead.
    assert (
        parsing.parse_spec({**spec, "clientSecretRef": {"name": "c"}}, name="x").client_id is None
    )


@pytest.mark.parametrize(
    ("material", "target", "field"),
    [
        ({"privateKeyRef": KEY_REF}, {"name": "payments-signing-key"}, "spec.privateKeyRef.name"),
        (
            {"clientCertificateRef": CERT_REF},
            {"name": "payments-client-tls"},
            "spec.clientCertificateRef.name",
        ),
        # The default target name, <metadata.name>-token, counts too.
        ({"privateKeyRef": {"name": "billing-token"}}, None, "spec.privateKeyRef.name"),
        (
            {"clientCertificateRef": {"name": "billing-token"}},
            None,
            "spec.clientCertificateRef.name",
        ),
    ],
)
def test_the_target_must_not_be_a_credential_secret(
    material: dict[str, Any], target: dict[str, str] | None, field: str
) -> None:
    spec = keyless(**material)
    if target is not None:
        spec["target"] = target
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name="billing")
    assert caught.value.field == "spec.target.name"
    assert f"({field})" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ("key", "spec.privateKeyRef", "an object"),
        ({}, "spec.privateKeyRef.name", "is required"),
        ({"name": "Bad_Name"}, "spec.privateKeyRef.name", "not a valid Secret name"),
        ({"name": "k", "key": ""}, "spec.privateKeyRef.key", "non-empty"),
        ({"name": "k", "certificateKey": ""}, "spec.privateKeyRef.certificateKey", "non-empty"),
    ],
)
def test_private_key_ref_validation(raw: object, field: str, fragment: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(privateKeyRef=raw), name="x")
    assert caught.value.field == field
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (["c"], "spec.clientCertificateRef", "an object"),
        ({}, "spec.clientCertificateRef.name", "is required"),
        ({"name": "a" * 254}, "spec.clientCertificateRef.name", "at most 253 characters"),
    ],
)
def test_client_certificate_ref_validation(raw: object, field: str, fragment: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(clientCertificateRef=raw), name="x")
    assert caught.value.field == field
    assert fragment in str(caught.value)


@pytest.mark.parametrize("algorithm", model.ASSERTION_ALGORITHMS)
def test_client_assertion_algorithms_accepted(algorithm: str) -> None:
    spec = keyless(privateKeyRef=KEY_REF, clientAssertion={"algorithm": algorithm})
    assert parsing.parse_spec(spec, name="x").request.assertion.algorithm == algorithm


@pytest.mark.parametrize("algorithm", ["rs256", "none", "ES256K", "HS128", "EdDSA ", 256])
def test_client_assertion_algorithms_refused(algorithm: object) -> None:
    spec = keyless(privateKeyRef=KEY_REF, clientAssertion={"algorithm": algorithm})
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name="x")
    assert caught.value.field == "spec.clientAssertion.algorithm"


def test_the_algorithm_enum() -> None:
    assert set(model.ASSERTION_ALGORITHMS) == {
        *(f"{family}{bits}" for family in ("RS", "PS", "ES", "HS") for bits in (256, 384, 512)),
        "EdDSA",
    }


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        ("10s", 10 * S),
        ("10000ms", 10 * S),
        ("2m", 120 * S),
        ("1h", 3600 * S),
        ("59m59.999s", datetime.timedelta(seconds=3599, milliseconds=999)),
    ],
)
def test_client_assertion_lifetime_bounds_accepted(
    lifetime: str, expected: datetime.timedelta
) -> None:
    spec = keyless(privateKeyRef=KEY_REF, clientAssertion={"lifetime": lifetime})
    assert parsing.parse_spec(spec, name="x").request.assertion.lifetime == expected


@pytest.mark.parametrize(
    ("lifetime", "fragment"),
    [
        ("9s", "between 10s and 1h"),
        ("9999ms", "between 10s and 1h"),
        ("0s", "between 10s and 1h"),
        ("1h1ms", "between 10s and 1h"),
        ("61m", "between 10s and 1h"),
        ("10", "invalid duration"),
        ("-10s", "invalid duration"),
        (30, "invalid duration"),
    ],
)
def test_client_assertion_lifetime_bounds_refused(lifetime: object, fragment: str) -> None:
    spec = keyless(privateKeyRef=KEY_REF, clientAssertion={"lifetime": lifetime})
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name="x")
    assert caught.value.field == "spec.clientAssertion.lifetime"
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("opts", "spec.clientAssertion"),
        ({"audience": ""}, "spec.clientAssertion.audience"),
        ({"keyID": ""}, "spec.clientAssertion.keyID"),
        ({"keyID": 7}, "spec.clientAssertion.keyID"),
    ],
)
def test_client_assertion_validation(raw: object, field: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(privateKeyRef=KEY_REF, clientAssertion=raw), name="x")
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ("payments", "spec.serviceAccountRef", "an object"),
        ({"audience": "api://x"}, "spec.serviceAccountRef.name", "is required"),
        ({"name": "Payments", "audience": "x"}, "spec.serviceAccountRef.name", "ServiceAccount"),
        ({"name": "pay_ments", "audience": "x"}, "spec.serviceAccountRef.name", "ServiceAccount"),
        (
            {"name": "a" * 254, "audience": "x"},
            "spec.serviceAccountRef.name",
            "at most 253 characters",
        ),
        ({"name": "-payments", "audience": "x"}, "spec.serviceAccountRef.name", "ServiceAccount"),
        ({"name": "payments"}, "spec.serviceAccountRef.audience", "is required"),
        ({"name": "payments", "audience": ""}, "spec.serviceAccountRef.audience", "non-empty"),
    ],
)
def test_service_account_ref_validation(raw: object, field: str, fragment: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(keyless(serviceAccountRef=raw), name="x")
    assert caught.value.field == field
    assert fragment in str(caught.value)


def test_service_account_names_may_have_dots() -> None:
    raw = {"name": "payments.v2", "audience": "sts.amazonaws.com"}
    parsed = parsing.parse_spec(keyless(serviceAccountRef=raw), name="x")
    assert parsed.service_account_ref == model.ServiceAccountRef("payments.v2", "sts.amazonaws.com")
    assert parsed.secret_names == ()  # a ServiceAccount is not a Secret to read


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        ({"clientSecretRef": {"name": "a"}}, ("a",)),
        ({"privateKeyRef": {"name": "b"}}, ("b",)),
        ({"clientCertificateRef": {"name": "c"}}, ("c",)),
        (
            {
                "clientCertificateRef": {"name": "c"},
                "privateKeyRef": {"name": "b"},
                "clientSecretRef": {"name": "a"},
            },
            ("a", "b", "c"),
        ),
        # One Secret holding several kinds of material is read once.
        ({"clientSecretRef": {"name": "a"}, "privateKeyRef": {"name": "a"}}, ("a",)),
        (
            {
                "clientSecretRef": {"name": "a"},
                "privateKeyRef": {"name": "b"},
                "clientCertificateRef": {"name": "a"},
            },
            ("a", "b"),
        ),
        ({"privateKeyRef": {"name": "b"}, "clientCertificateRef": {"name": "b"}}, ("b",)),
    ],
)
def test_secret_names_each_once_in_a_fixed_order(
    refs: dict[str, Any], expected: tuple[str, ...]
) -> None:
    assert parsing.parse_spec(keyless(**refs), name="x").secret_names == expected
