"""The target's shape (decision 0040): templates in their sandbox, dockerconfigjson, and
the annotations that let a Secret of any shape say whether it is whole."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import json
import pathlib
from typing import Any

import pytest
import yaml

from tokensync import failures, model, parsing, shape, target, templates

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ISSUED = datetime.datetime(2026, 11, 22, 22, 15, tzinfo=datetime.UTC)
EXPIRES = ISSUED + datetime.timedelta(hours=1)
# A token with characters that each recipe must carry or escape: '+', '/', '='.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2ln+/="
SHAPED = shape.Token(
    access_token=TOKEN,
    token_type="bearer",
    expires_at=EXPIRES,
    scope="orders.read orders.write",
    issued_at=ISSUED,
)
UID = "0b5e0a4c-7f1e-4c38-9d7a-2f3c1d2e4f50"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def templated(**data: str) -> model.TargetSpec:
    return model.TargetSpec(name="t", template=model.TargetTemplate(tuple(sorted(data.items()))))


def render_one(text: str, token: shape.Token = SHAPED) -> str:
    value = shape.render(templated(k=text), token, show_error=True)["k"]
    assert value is not None
    return value


def example_target(name: str) -> model.TargetSpec:
    docs = yaml.safe_load_all((REPO_ROOT / "examples" / name).read_text())
    (doc,) = [d for d in docs if d and d["kind"] == model.KIND]
    return parsing.parse_spec(doc["spec"], name=doc["metadata"]["name"]).target


# -- the recipes, from the files in examples/ ----------------------------------------------

RECIPES = {
    "target-template-token.yaml": {"token": TOKEN},
    "target-template-header.yaml": {"header": f"Authorization: Bearer {TOKEN}"},
    "target-template-netrc.yaml": {
        ".netrc": f"machine archive.example.com\nlogin oauth2\npassword {TOKEN}\n"
    },
    "target-template-properties.yaml": {
        "client.properties": (
            f"oauth.access.token={TOKEN}\noauth.token.type=bearer\n"
            "oauth.token.expires.at=2026-11-22T23:15:00Z\noauth.scope=orders.read orders.write\n"
        )
    },
    "target-template-query.yaml": {
        "query": "access_token=" + TOKEN.replace("+", "%2B").replace("=", "%3D")
    },
}


@pytest.mark.parametrize(("path", "expected"), RECIPES.items(), ids=list(RECIPES))
def test_each_recipe_renders_what_its_consumer_reads(path: str, expected: dict[str, str]) -> None:
    wanted = example_target(path)
    shape.check(wanted)
    assert shape.render(wanted, SHAPED) == expected


def test_the_json_recipe_is_json_with_numbers() -> None:
    (value,) = shape.render(example_target("target-template-json.yaml"), SHAPED).values()
    assert value is not None
    assert json.loads(value) == {
        "access_token": TOKEN,
        "token_type": "bearer",
        "expires_at": int(EXPIRES.timestamp()),
        "expires_in": 3600,
        "scope": "orders.read orders.write",
    }


def test_the_properties_recipe_leaves_out_an_empty_scope() -> None:
    wanted = example_target("target-template-properties.yaml")
    (value,) = shape.render(wanted, dataclasses.replace(SHAPED, scope=None)).values()
    assert value is not None
    assert "scope" not in value
    assert value.endswith("Z\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ access_token }}", TOKEN),
        ("{{ token_type }}", "bearer"),
        ("{{ authorization }}", f"Bearer {TOKEN}"),  # the scheme as RFC 6750 spells it
        ("{{ expires_at }}", "2026-11-22T23:15:00Z"),
        ("{{ expires_at_epoch }}", str(int(EXPIRES.timestamp()))),
        ("{{ expires_in }}", "3600"),
        ("{{ issued_at }}", "2026-11-22T22:15:00Z"),
        ("{{ scope }}", "orders.read orders.write"),
        ("{{ access_token | b64encode }}", b64(TOKEN)),
        ("{{ {'t': access_token} | tojson }}", json.dumps({"t": TOKEN})),
        ("{{ scope | urlencode }}", "orders.read%20orders.write"),
        ("{{ 'Bearer ' ~ access_token }}", f"Bearer {TOKEN}"),
        ("{{ expires_in * 1000 }}", "3600000"),
        ("{{ token_type | upper }}", "BEARER"),
        ("{{ {'t': 1} | tojson(indent=2) }}", '{\n  "t": 1\n}'),
    ],
)
def test_each_variable_and_filter(text: str, expected: str) -> None:
    assert render_one(text) == expected


def test_an_empty_scope_is_an_empty_string() -> None:
    assert render_one("[{{ scope }}]", dataclasses.replace(SHAPED, scope=None)) == "[]"


REFUSED = [
    ("{{ nope }}", "'nope' is undefined"),
    ("{{ access_toke }}", "'access_toke' is undefined"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ access_token.__class__ }}", "unsafe"),
    ("{{ self._TemplateReference__context }}", "unsafe"),
    ("{{ access_token.upper() }}", "Call is not allowed"),
    ("{{ lipsum() }}", "Call is not allowed"),
    ("{{ cycler }}", "'cycler' is undefined"),
    ("{% for i in range(9) %}x{% endfor %}", "For is not allowed"),
    ("{% set a = access_token %}{{ a }}", "Assign is not allowed"),
    ("{% macro m() %}{% endmacro %}", "Macro is not allowed"),
    ("{% include 'x' %}", "Include is not allowed"),
    ("{% extends 'x' %}", "Extends is not allowed"),
    ("{{ access_token.upper }}", "printed a builtin_function_or_method"),
    ("{{ {'a': 1} }}", "printed a dict"),
    ("{{ access_token | attr('x') }}", "No filter named 'attr'"),
    ("{{ '%s' % access_token }}", "string formatting with % is not supported"),
    ("{{ 'x' * 10 ** 9 }}", "longer than 262144"),
    ("{{ 2 ** 1000 }}", "exponents must be integers of at most 128"),
    (
        "{{ expires_in * expires_in * expires_in * expires_in * expires_in * expires_in "
        "* expires_in * expires_in * expires_in * expires_in * expires_in }}",
        "larger than 128 bits",
    ),
    ("{{ 'x' | replace('', access_token * 5000) }}", "longer than 262144"),
    ("{{ access_token | replace('', access_token * 100, -1) }}", "longer than 262144"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ {'a': [1] * 100000} | tojson(indent=1000) }}", "indent must be between 0 and 8"),
    ("{{ access_token", "unexpected end of template"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED, ids=[t for t, _ in REFUSED])
def test_what_the_sandbox_refuses(text: str, message: str) -> None:
    with pytest.raises(failures.Failure) as caught:
        shape.check(templated(**{"my.key": text}))
    assert caught.value.reason is failures.Reason.TEMPLATE_FAILED
    assert caught.value.kind is failures.Kind.SPEC  # only a spec change helps
    assert caught.value.message.startswith("spec.target.template.data[my.key]: ")
    assert message in caught.value.message


def test_amplification_stops_at_the_bounds() -> None:
    big = dataclasses.replace(SHAPED, access_token="a%" * 60_000)
    chains = [
        "{{ access_token ~ access_token ~ access_token }}",
        "{{ access_token" + " | b64encode" * 40 + " }}",
        "{{ access_token" + " | urlencode | lower" * 50 + " }}",
        "{{ access_token" + " | lower" * 2000 + " }}",  # too deep for Python: refused too
        "{{ access_token }}{{ access_token }}{{ access_token }}",
    ]
    for text in chains:
        with pytest.raises(
            failures.Failure, match=r"longer than|MiB of string work|bytes|RecursionError"
        ):
            render_one(text, big)


def test_the_work_budget_stops_a_long_chain_of_cheap_filters() -> None:
    big = dataclasses.replace(SHAPED, access_token="a" * 100_000)
    with pytest.raises(failures.Failure, match="MiB of string work"):
        render_one("{{ access_token" + " | lower" * 100 + " }}", big)


def test_a_failure_with_the_real_token_never_shows_it() -> None:
    # Renders with the placeholder (a JWT: it starts with eyJ), not with this token.
    wanted = templated(k="{{ {'eyJ': 1}[access_token[:3]] }}")
    shape.check(wanted)
    no_dots = dataclasses.replace(SHAPED, access_token="s3cr3t-opaque-token")
    with pytest.raises(failures.Failure) as caught:
        shape.render(wanted, no_dots)
    assert "s3c" not in caught.value.message
    assert "not shown" in caught.value.message
    # The same error, shown (tokensync fetch --render), names the key it missed:
    with pytest.raises(failures.Failure, match="s3c"):
        shape.render(wanted, no_dots, show_error=True)


def test_rendered_output_is_bounded_in_bytes_over_all_keys() -> None:
    at = "x" * (templates.MAX_OUTPUT // 2 - 1)
    shape.render(templated(a=at, b=at), SHAPED)
    with pytest.raises(failures.Failure, match="longer than 262144"):
        shape.render(templated(a=at, b=at + "xxx"), SHAPED)
    with pytest.raises(failures.Failure, match="262144 bytes"):
        shape.render(templated(a="é" * (templates.MAX_OUTPUT // 2 + 1)), SHAPED)


def test_templates_are_compiled_once_per_text() -> None:
    first = templates.compile_template("{{ access_token }} once")
    assert templates.compile_template("{{ access_token }} once") is first


# -- dockerconfigjson ----------------------------------------------------------------------


def kubelet_read(config_json: str) -> dict[str, tuple[str, str]]:
    """What k8s.io/kubernetes pkg/credentialprovider makes of a .dockerconfigjson:
    DockerConfigJSON{Auths map[string]DockerConfigEntry}; an entry's ``auth``, when set,
    wins and is base64(username:password) split at the first colon
    (DockerConfigEntry.UnmarshalJSON, decodeDockerConfigFieldAuth)."""
    parsed = json.loads(config_json)
    found = {}
    for registry, entry in parsed["auths"].items():
        assert set(entry) <= {"username", "password", "email", "auth"}
        username, password = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        found[registry] = (username, password)
    return found


def test_dockerconfigjson_is_what_the_kubelet_reads() -> None:
    wanted = example_target("target-dockerconfigjson.yaml")
    assert wanted.type is model.SecretType.DOCKER_CONFIG_JSON
    data = shape.render(wanted, SHAPED)
    assert list(data) == [".dockerconfigjson"]  # only the key imagePullSecrets use
    value = data[".dockerconfigjson"]
    assert value is not None
    assert kubelet_read(value) == {"europe-docker.pkg.dev": ("oauth2accesstoken", TOKEN)}
    entry = json.loads(value)["auths"]["europe-docker.pkg.dev"]
    assert entry == {
        "username": "oauth2accesstoken",
        "password": TOKEN,
        "auth": b64(f"oauth2accesstoken:{TOKEN}"),
    }


def test_a_registry_user_defaults_to_oauth2accesstoken() -> None:
    spec = {
        "tokenURL": "https://a.example/t",
        "clientSecretRef": {"name": "c"},
        "target": {
            "type": "kubernetes.io/dockerconfigjson",
            "dockerConfig": {"registry": "registry.example.com:5000"},
        },
    }
    config = parsing.parse_spec(spec, name="x").target.docker_config
    assert config == model.DockerConfig(registry="registry.example.com:5000")
    assert config.username == "oauth2accesstoken"


# -- the parser ------------------------------------------------------------------------------


BASE: dict[str, Any] = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
DOCKER = "kubernetes.io/dockerconfigjson"


@pytest.mark.parametrize(
    ("target_raw", "field", "message"),
    [
        ({"type": "Other"}, "spec.target.type", "must be one of Opaque, " + DOCKER),
        ({"type": DOCKER}, "spec.target.dockerConfig", "is required when"),
        ({"dockerConfig": {"registry": "r.example"}}, "spec.target.dockerConfig", "only when"),
        (
            {
                "type": DOCKER,
                "dockerConfig": {"registry": "r.example"},
                "template": {"data": {"a": "b"}},
            },
            "spec.target.template",
            "cannot be combined",
        ),
        ({"type": DOCKER, "dockerConfig": {}}, "spec.target.dockerConfig.registry", "is required"),
        (
            {"type": DOCKER, "dockerConfig": {"registry": "https://r.example/v2"}},
            "spec.target.dockerConfig.registry",
            "not a registry host",
        ),
        (
            {"type": DOCKER, "dockerConfig": {"registry": "r.example", "username": "a:b"}},
            "spec.target.dockerConfig.username",
            "without spaces or colons",
        ),
        ({"template": {}}, "spec.target.template.data", "is required"),
        ({"template": {"data": {}}}, "spec.target.template.data", "at least one key"),
        (
            {"template": {"data": {"a/b": "x"}}},
            "spec.target.template.data",
            "not a valid Secret key",
        ),
        (
            {"template": {"data": {"..a": "x"}}},
            "spec.target.template.data",
            "not a valid Secret key",
        ),
        ({"template": {"data": {".": "x"}}}, "spec.target.template.data", "not a valid Secret key"),
        ({"template": {"data": {"a": 1}}}, "spec.target.template.data", "must be a map of strings"),
        (
            {"template": {"data": {f"k{i}": "x" * 4000 for i in range(5)}}},
            "spec.target.template.data",
            "keys and templates together must be at most 16384 characters",
        ),
    ],
)
def test_parse_spec_refuses_a_bad_shape(
    target_raw: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec({**BASE, "target": target_raw}, name="x")
    assert caught.value.field == field
    assert message in str(caught.value)


def test_parse_spec_admits_the_largest_template() -> None:
    data = {f"k{i:02d}": "x" * 1021 for i in range(16)}
    assert sum(len(k) + len(v) for k, v in data.items()) == 16384
    parsed = parsing.parse_spec({**BASE, "target": {"template": {"data": data}}}, name="x")
    assert parsed.target.template is not None
    assert len(parsed.target.template.data) == 16


def test_a_template_that_does_not_parse_is_refused_at_the_attempt_not_by_the_parser() -> None:
    parsed = parsing.parse_spec({**BASE, "target": {"template": {"data": {"a": "{{"}}}}, name="x")
    with pytest.raises(failures.Failure) as caught:
        shape.check(parsed.target)
    assert caught.value.reason is failures.Reason.TEMPLATE_FAILED


# -- the Secret: keys, annotations, whole, digest ----------------------------------------------


def body(wanted: model.TargetSpec, token: str = TOKEN, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "namespace": "payments",
        "credential": "orders",
        "credential_uid": UID,
        "target": wanted,
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": EXPIRES,
        "scope": None,
        "issued_at": ISSUED,
        "refresh_at": ISSUED + datetime.timedelta(minutes=40),
    }
    arguments.update(overrides)
    return target.render_target(**arguments)


def stored(rendered: dict[str, Any]) -> dict[str, Any]:
    """The Secret a create body became (the API server adds its fields)."""
    secret = copy.deepcopy(target.for_create(rendered))
    secret["metadata"].update(uid="u1", resourceVersion="7")
    return secret


NETRC = templated(**{".netrc": "password {{ access_token }}\n", "token": "{{ access_token }}"})


def test_a_templated_target_holds_exactly_its_keys_and_lists_them() -> None:
    rendered = body(NETRC)
    assert rendered["type"] == "Opaque"
    assert {k: unb64(v) for k, v in rendered["data"].items()} == {
        ".netrc": f"password {TOKEN}\n",
        "token": TOKEN,
    }
    annotations = rendered["metadata"]["annotations"]
    assert annotations[shape.DATA_KEYS_ANNOTATION] == ".netrc,token"
    assert annotations[shape.DATA_DIGEST_ANNOTATION].startswith("sha256:")
    assert TOKEN not in json.dumps(annotations)


def test_a_dockerconfigjson_target_has_its_type() -> None:
    wanted = example_target("target-dockerconfigjson.yaml")
    rendered = body(wanted)
    assert rendered["type"] == DOCKER
    assert list(rendered["data"]) == [".dockerconfigjson"]
    assert rendered["metadata"]["annotations"][shape.DATA_KEYS_ANNOTATION] == ".dockerconfigjson"
    assert kubelet_read(unb64(rendered["data"][".dockerconfigjson"]))


def test_the_default_shape_has_no_new_annotation_nor_key() -> None:
    default = model.TargetSpec(name="t")
    assert body(default) == body(default, previous=shape.DEFAULT_WRITTEN)
    annotations = body(default)["metadata"]["annotations"]
    assert not set(annotations) & set(target.SHAPE_ANNOTATIONS)
    assert list(body(default)["data"]) == list(target.DATA_KEYS)


@pytest.mark.parametrize(
    ("edit", "whole"),
    [
        (lambda s: None, True),
        (lambda s: s["data"].update(token=b64("typed")), False),
        (lambda s: s["data"].pop(".netrc"), False),
        (lambda s: s["data"].update(other=b64("someone else's")), True),  # not tokensync's
        (
            lambda s: s["metadata"]["annotations"].update({shape.DATA_KEYS_ANNOTATION: "token"}),
            False,
        ),
        (lambda s: s["metadata"]["annotations"].pop(shape.DATA_DIGEST_ANNOTATION), False),
        (
            lambda s: s["metadata"]["annotations"].update(
                {target.ISSUED_AT_ANNOTATION: "2099-01-01T00:00:00Z"}
            ),
            False,
        ),
    ],
)
def test_whole_times_of_a_templated_target(edit: Any, whole: bool) -> None:
    secret = stored(body(NETRC))
    edit(secret)
    found = target.whole_times(secret)
    assert (found is not None) == whole
    if whole:
        assert found == (ISSUED, EXPIRES, ISSUED + datetime.timedelta(minutes=40))


def test_the_digest_of_a_templated_target() -> None:
    rendered = body(NETRC)
    secret = stored(rendered)
    assert target.digest(rendered) == target.digest(secret)
    secret["data"]["other"] = b64("theirs")
    secret["metadata"]["labels"]["team"] = "a"
    assert target.digest(rendered) == target.digest(secret)  # the user's parts
    secret["data"]["token"] = b64("typed")
    assert target.digest(rendered) != target.digest(secret)
    assert target.digest(body(NETRC, "another")) != target.digest(rendered)


def test_a_new_shape_removes_what_the_last_one_wrote() -> None:
    first = stored(body(NETRC))
    previous = target.written(first)
    assert previous == shape.Written(frozenset({".netrc", "token"}), listed=True)

    header = body(templated(header="{{ authorization }}"), previous=previous)
    assert header["data"][".netrc"] is None
    assert header["data"]["token"] is None
    assert unb64(header["data"]["header"]) == f"Bearer {TOKEN}"

    default = body(model.TargetSpec(name="t"), previous=previous)
    assert default["data"][".netrc"] is None
    assert default["data"]["token"] is None
    annotations = default["metadata"]["annotations"]
    assert annotations[shape.DATA_KEYS_ANNOTATION] is None  # removed by the merge patch
    assert annotations[shape.DATA_DIGEST_ANNOTATION] is None
    created = target.for_create(default)
    assert None not in created["metadata"]["annotations"].values()
    assert None not in created["data"].values()

    back = body(NETRC, previous=target.written(stored(default)))
    assert {k for k, v in back["data"].items() if v is None} == set(target.DATA_KEYS)


def test_seen_carries_the_written_keys() -> None:
    secret = stored(body(NETRC))
    seen = target.seen("ADDED", secret)
    assert seen is not None
    assert seen.written == target.written(secret)
    assert seen.times is not None


def test_the_refresh_time_annotation_reads_back_to_the_millisecond() -> None:
    due = ISSUED + datetime.timedelta(minutes=40, microseconds=712_345)
    rendered = body(NETRC, refresh_at=due)
    annotations = rendered["metadata"]["annotations"]
    assert annotations[target.REFRESH_AT_ANNOTATION].endswith(".712Z")
    issued, _, refresh = target.token_times(stored(rendered)) or (None, None, None)
    assert refresh == due.replace(microsecond=712_000)
    assert issued == ISSUED.replace(microsecond=0)  # the issue time stays whole seconds
