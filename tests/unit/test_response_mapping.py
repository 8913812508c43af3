"""spec.responseMapping: the JMESPath path subset (``mapping``), the spec's rules
(``parsing``) and non-standard token responses read through it (``responses``)."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import bounds, failures, mapping, model, parsing, responses

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
SECRET = "s3cr3t-token-value"


def paths(**fields: str) -> model.ResponseMapping:
    return model.ResponseMapping(**fields)


def parse(body: object, mapped: model.ResponseMapping) -> responses.Token:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return responses.parse_token_response(
        status_code=200, headers={}, body=raw, sent_at=T0, default_lifetime=H, mapping=mapped
    )


def refused(body: object, mapped: model.ResponseMapping) -> failures.TokenError:
    with pytest.raises(failures.TokenError) as caught:
        parse(body, mapped)
    error = caught.value
    assert error.reason is failures.Reason.BAD_RESPONSE
    assert not error.permanent
    assert SECRET not in str(error)
    return error


# -- the path subset ---------------------------------------------------------------------

ACCEPTED = [
    "access_token",
    "data.accessToken",
    "data.tokens[0].value",
    "tokens[-1]",
    "a[0][1].b",
    'data."access-token"',
    '"urn:ietf:token".value',
    '"a.b"."c d"',
    '"\\u0041\\"x"',
    "a.b.c.d.e.f.g.h",
]
REFUSED = [
    "",
    "data[*].token",  # projection
    "data[].token",  # flatten
    "data[?kind=='bearer'].token",  # filter
    "data[0:2]",  # slice
    "data.*",  # object projection
    "length(data)",  # function
    "[data, data]",  # multiselect list
    "{a: data}",  # multiselect hash
    "data | token",  # pipe
    "data || token",
    '`"literal"`',
    "@",
    "$.data.token",  # JSONPath, not JMESPath
    ".data.token",
    "{.data.token}",  # kubectl's JSONPath template
    "data..token",
    "data.",
    "data[x]",
    "data [0]",
    " data",
    "1abc",
    '"unterminated',
    '""',
    '"ü"',
    "data.tökén",
]


@pytest.mark.parametrize("expression", ACCEPTED)
def test_paths_of_names_quoted_names_and_indexes_are_accepted(expression: str) -> None:
    assert mapping.compile_path(expression, field="f") is not None


@pytest.mark.parametrize("expression", REFUSED)
def test_everything_else_is_refused_naming_the_field(expression: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        mapping.compile_path(expression, field="spec.responseMapping.accessToken")
    assert caught.value.field == "spec.responseMapping.accessToken"
    assert str(caught.value) == f"spec.responseMapping.accessToken: {mapping.PATH_MESSAGE}"


def test_the_pattern_and_the_compiled_nodes_agree() -> None:
    """What the regular expression (the CRD's rule) lets through, JMESPath parses to path
    nodes only: the second line never has to refuse what the first admitted."""
    for expression in ACCEPTED:
        assert re.fullmatch(mapping.PATH_PATTERN, expression)
    for expression in REFUSED:
        assert not re.fullmatch(mapping.PATH_PATTERN, expression)


@given(st.text(alphabet='abz_09."[]-\\u *?|@`', max_size=40))
def test_pattern_never_admits_what_jmespath_cannot_walk_as_a_path(expression: str) -> None:
    if re.fullmatch(mapping.PATH_PATTERN, expression):
        mapping.compile_path(expression, field="f")
    else:
        with pytest.raises(model.SpecError):
            mapping.compile_path(expression, field="f")


def test_length_is_bounded_before_anything_is_parsed() -> None:
    longest = ".".join(["a"] * 128)
    assert len(longest) == 255
    mapping.compile_path(longest, field="f")
    with pytest.raises(model.SpecError, match="at most 256 characters"):
        mapping.compile_path(longest + ".b", field="f")
    assert bounds.SIZE_BOUNDS["spec.responseMapping.accessToken"] == mapping.MAX_EXPRESSION_LENGTH


def test_expensive_expressions_cannot_be_written() -> None:
    """JMESPath's multiselects and projections double a result with each step; none of them
    is in the subset, and the longest path costs a hundred-odd lookups on any body."""
    doubling = "[@,@][]" * 30
    with pytest.raises(model.SpecError):
        mapping.compile_path(doubling, field="f")
    # A megabyte-wide and deep body: a path does not look at what it does not step on.
    wide: dict[str, Any] = {f"k{i}": list(range(100)) for i in range(10_000)}
    deep: dict[str, Any] = {"a": 1}
    for _ in range(120):
        deep = {"a": deep}
    wide["a"] = deep
    longest = ".".join(["a"] * 122)
    started = time.perf_counter()
    for _ in range(1000):
        assert mapping.find(longest, wide) == 1
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("expression", "document", "expected"),
    [
        ("a.b", {"a": {"b": "x"}}, "x"),
        ("a[0].b", {"a": [{"b": "x"}, {"b": "y"}]}, "x"),
        ("a[-1].b", {"a": [{"b": "x"}, {"b": "y"}]}, "y"),
        ("a[0][1]", {"a": [["x", "y"]]}, "y"),
        ('"a-b"."c.d"', {"a-b": {"c.d": "x"}}, "x"),
        ("a[5]", {"a": [1]}, None),
        ("a[99999999999999999999999999]", {"a": [1]}, None),
        ("a[-99999999999999999999999999]", {"a": [1]}, None),
        ("a.b", {"a": [{"b": 1}]}, None),
        ("a[0]", {"a": {"0": 1}}, None),
        ("a.b.c", {"a": "string"}, None),
        ("missing", {}, None),
    ],
)
def test_find(expression: str, document: dict[str, Any], expected: object) -> None:
    assert mapping.find(expression, document) == expected


# -- the spec ------------------------------------------------------------------------------

BASE = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}


def spec_with(raw: object) -> model.ClientCredentialSpec:
    return parsing.parse_spec({**BASE, "responseMapping": raw}, name="x")


def test_parse_spec_reads_the_mapping() -> None:
    spec = spec_with(
        {"accessToken": "data.accessToken", "expiresAt": "data.expiresAt", "scope": "s"}
    )
    assert spec.request.response_mapping == model.ResponseMapping(
        access_token="data.accessToken", expires_at="data.expiresAt", scope="s"
    )
    assert parsing.parse_spec(BASE, name="x").request.response_mapping is None


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ("data", "spec.responseMapping", "must be an object"),
        ({}, "spec.responseMapping", "set at least one of accessToken, expiresIn, expiresAt"),
        (
            {"expiresIn": "a", "expiresAt": "b"},
            "spec.responseMapping.expiresAt",
            "set expiresIn or expiresAt, not both",
        ),
        ({"accessToken": ""}, "spec.responseMapping.accessToken", "must be a non-empty string"),
        ({"tokenType": 5}, "spec.responseMapping.tokenType", "must be a non-empty string"),
        ({"scope": "a[*]"}, "spec.responseMapping.scope", mapping.PATH_MESSAGE),
        ({"expiresIn": "a" * 257}, "spec.responseMapping.expiresIn", "at most 256 characters"),
    ],
)
def test_parse_spec_refuses_naming_the_field(raw: object, field: str, message: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        spec_with(raw)
    assert caught.value.field == field
    assert message in str(caught.value)


# -- responses read through a mapping ------------------------------------------------------


def test_the_issue_s_example() -> None:
    token = parse(
        {"data": {"accessToken": SECRET, "expiresAt": "2026-01-01T10:00:00Z"}},
        paths(access_token="data.accessToken", expires_at="data.expiresAt"),
    )
    assert token.access_token == SECRET
    assert token.token_type == "Bearer"
    assert token.expires_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert token.lifetime_source == "expires_at"
    assert token.scope is None


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        (int(T0.timestamp()) + 3600, T0 + H),
        (T0.timestamp() + 90.5, T0 + timedelta(seconds=90.5)),
        (str(int(T0.timestamp()) + 3600), T0 + H),
        ("2026-01-01T01:00:00Z", T0 + H),
        ("2026-01-01T01:00:00z", T0 + H),
        ("2026-01-01T03:00:00+02:00", T0 + H),
        ("2025-12-31T20:00:00-05:00", T0 + H),
        ("2026-01-01T01:00:00.250Z", T0 + timedelta(seconds=3600.25)),
        ("2026-01-01 01:00:00Z", T0 + H),
    ],
)
def test_expires_at_epoch_or_rfc3339(expires_at: object, expected: datetime) -> None:
    token = parse({"t": SECRET, "exp": expires_at}, paths(access_token="t", expires_at="exp"))
    assert token.expires_at == expected
    assert token.lifetime_source == "expires_at"


@pytest.mark.parametrize(
    ("expires_at", "problem"),
    [
        ("2026-01-01T01:00:00", "nor an RFC 3339 time with an offset"),  # local time
        ("2026-01-02", "nor an RFC 3339 time with an offset"),
        ("tomorrow", "nor an RFC 3339 time with an offset"),
        ("", "nor an RFC 3339 time with an offset"),
        (True, "nor an RFC 3339 time"),
        ({"at": 1}, "nor an RFC 3339 time"),
        ([1], "nor an RFC 3339 time"),
        (int(T0.timestamp()), "is not after the request time"),
        (int(T0.timestamp()) - 60, "is not after the request time"),
        ("2025-12-31T23:59:59Z", "is not after the request time"),
        (-1, "is not after the request time"),
        (int(T0.timestamp() + 3600) * 1000, "is out of range"),  # milliseconds
        (10**400, "is out of range"),
        (1e308, "is out of range"),
        ("9" * 400, "is out of range"),
        ("9999-12-31T23:59:59Z", "is out of range"),
        ("0001-01-01T00:00:00+01:00", "is not after the request time"),
    ],
)
def test_bad_expires_at(expires_at: object, problem: str) -> None:
    error = refused({"t": SECRET, "exp": expires_at}, paths(access_token="t", expires_at="exp"))
    assert "responseMapping.expiresAt (exp) is" in str(error)
    assert problem in str(error)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(3600, H), ("3600", H), (" 90 ", timedelta(seconds=90)), (1.5, timedelta(seconds=1.5))],
)
def test_expires_in_number_or_string(expires_in: object, lifetime: timedelta) -> None:
    token = parse(
        {"d": {"token": SECRET, "ttl": expires_in}},
        paths(access_token="d.token", expires_in="d.ttl"),
    )
    assert token.lifetime == lifetime
    assert token.lifetime_source == "expires_in"


@pytest.mark.parametrize(
    ("expires_in", "problem"),
    [
        ("soon", "is not a number"),
        (True, "is not a number"),
        ([3600], "is not a number"),
        (0, "is out of range"),
        (-5, "is out of range"),
        (10**400, "is out of range"),
        ("9" * 400, "is out of range"),
        (1e308, "is out of range"),
    ],
)
def test_bad_expires_in(expires_in: object, problem: str) -> None:
    error = refused({"t": SECRET, "ttl": expires_in}, paths(access_token="t", expires_in="ttl"))
    assert str(error).endswith(f"responseMapping.expiresIn (ttl) {problem}")


def test_huge_standard_expires_in_is_out_of_range_too() -> None:
    """An integer of hundreds of digits used to escape as OverflowError."""
    body = b'{"access_token": "x", "token_type": "Bearer", "expires_in": 1' + b"0" * 400 + b"}"
    with pytest.raises(failures.TokenError, match="expires_in is out of range"):
        responses.parse_token_response(
            status_code=200, headers={}, body=body, sent_at=T0, default_lifetime=H
        )


@pytest.mark.parametrize(
    ("body", "mapped", "message"),
    [
        (
            {"data": {}},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) found nothing",
        ),
        (
            {"data": [SECRET]},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) found nothing",
        ),
        (
            {"data": {"accessToken": None}},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) found nothing",
        ),
        (
            {"tokens": []},
            paths(access_token="tokens[0]"),
            "responseMapping.accessToken (tokens[0]) found nothing",
        ),
        (
            {"data": {"accessToken": 12345}},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) is not a non-empty string",
        ),
        (
            {"data": {"accessToken": ""}},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) is not a non-empty string",
        ),
        (
            {"data": {"accessToken": {"value": SECRET}}},
            paths(access_token="data.accessToken"),
            "responseMapping.accessToken (data.accessToken) is not a non-empty string",
        ),
        ({"token": SECRET}, paths(expires_in="ttl"), "access_token is missing"),
        (
            {"access_token": SECRET},
            paths(expires_in="ttl"),
            "responseMapping.expiresIn (ttl) found nothing",
        ),
        (
            {"t": SECRET, "kind": ["Bearer"]},
            paths(access_token="t", token_type="kind"),
            "responseMapping.tokenType (kind) is not a non-empty string",
        ),
        (
            {"t": SECRET, "kind": "B" * 65},
            paths(access_token="t", token_type="kind"),
            "responseMapping.tokenType (kind) is longer than 64 characters",
        ),
        (
            {"t": SECRET},
            paths(access_token="t", scope="granted.scopes"),
            "responseMapping.scope (granted.scopes) found nothing",
        ),
        (
            {"t": SECRET, "s": ["a", 1]},
            paths(access_token="t", scope="s"),
            "responseMapping.scope (s) is not a string or a list of strings",
        ),
        (
            {"t": SECRET, "s": "x" * (responses.MAX_SCOPE_LENGTH + 1)},
            paths(access_token="t", scope="s"),
            "responseMapping.scope (s) is longer than",
        ),
    ],
)
def test_a_path_that_finds_nothing_or_the_wrong_type_is_a_bad_response(
    body: object, mapped: model.ResponseMapping, message: str
) -> None:
    error = refused(body, mapped)
    assert message in str(error)


def test_values_found_never_reach_the_message() -> None:
    planted = "PLANTED-" + SECRET
    for body, mapped in [
        ({"a": planted, "ttl": planted}, paths(access_token="a", expires_in="ttl")),
        ({"a": planted, "exp": planted}, paths(access_token="a", expires_at="exp")),
        ({"a": planted, "k": {"x": planted}}, paths(access_token="a", token_type="k")),
        ({"a": {"x": planted}}, paths(access_token="a")),
    ]:
        assert planted not in str(refused(body, mapped))


def test_unset_fields_fall_back_to_the_standard_members() -> None:
    token = parse(
        {
            "access_token": SECRET,
            "token_type": "DPoP",
            "expires_in": 60,
            "scope": "a b",
        },
        paths(scope="scope"),
    )
    assert (token.token_type, token.lifetime, token.scope) == ("DPoP", timedelta(seconds=60), "a b")
    # Without token_type, Bearer; a standard scope of another type is ignored, as without a
    # mapping; no lifetime at all: the default.
    token = parse({"access_token": SECRET, "scope": 5}, paths(access_token="access_token"))
    assert (token.token_type, token.scope, token.lifetime) == ("Bearer", None, H)
    assert token.lifetime_source == "default"


def test_scope_as_a_list_and_type_from_a_quoted_name() -> None:
    token = parse(
        {"result": {"token-type": "bearer", "grants": [{"scopes": ["read", "write"]}], "t": "x"}},
        paths(
            access_token="result.t",
            token_type='result."token-type"',
            scope="result.grants[0].scopes",
        ),
    )
    assert (token.token_type, token.scope) == ("bearer", "read write")


def jwt_expiring(moment: datetime) -> str:
    payload = json.dumps({"exp": int(moment.timestamp())}).encode()
    return "e30." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".sig"


def test_the_jwt_exp_still_wins_when_earlier() -> None:
    """A resource server checks exp, whatever the mapped expiry said (decision 0031)."""
    token = parse(
        {"t": jwt_expiring(T0 + timedelta(minutes=5)), "at": "2026-01-01T02:00:00Z"},
        paths(access_token="t", expires_at="at"),
    )
    assert (token.lifetime, token.lifetime_source) == (timedelta(minutes=5), "jwt_exp")


def test_errors_and_non_2xx_are_classified_as_without_a_mapping() -> None:
    mapped = paths(access_token="data.accessToken")
    with pytest.raises(failures.TokenError) as caught:
        responses.parse_token_response(
            status_code=401,
            headers={},
            body=b'{"error": "invalid_client"}',
            sent_at=T0,
            default_lifetime=H,
            mapping=mapped,
        )
    assert caught.value.reason is failures.Reason.INVALID_CLIENT
    assert "body is not a JSON object" in str(refused(b"[1, 2]", mapped))
    assert "body exceeds 1 MiB" in str(refused(b" " * (2**20 + 1), mapped))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_json_gives_a_token_or_a_bad_response(data: object) -> None:
    mapped = paths(
        access_token="data.token", expires_at="data.exp", token_type="data.type", scope="data.s"
    )
    outcome: responses.Token | failures.TokenError
    try:
        outcome = parse({"data": data}, mapped)
    except failures.TokenError as error:
        outcome = error
    if isinstance(outcome, failures.TokenError):
        assert outcome.reason is failures.Reason.BAD_RESPONSE
    else:
        assert outcome.access_token
