"""The CRD, the examples and ``parsing.parse_spec`` describe the same resource.

The API server prunes every field the CRD schema does not declare, so a field that
parse_spec reads but the CRD lacks would silently never arrive; a field the CRD declares
but parse_spec ignores would be accepted and do nothing. Both directions are checked by
recording which keys parse_spec looks up.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from tokensync import bounds, durations, mapping, model, parsing

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / f"{model.PLURAL}.{model.GROUP}.yaml"
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
FULL_EXAMPLE = REPO_ROOT / "examples" / "clientcredential-full.yaml"


def load_crd() -> dict[str, Any]:
    (crd,) = [doc for doc in yaml.safe_load_all(CRD_PATH.read_text()) if doc]
    return dict(crd)


def version_schema() -> dict[str, Any]:
    crd = load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == model.VERSION]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = version_schema()["properties"]["spec"]
    return schema


def credentials_in(path: pathlib.Path) -> list[dict[str, Any]]:
    return [
        doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == model.KIND
    ]


EXAMPLE_CREDENTIALS = [
    pytest.param(doc, id=f"{path.name}:{doc['metadata']['name']}")
    for path in EXAMPLES
    for doc in credentials_in(path)
]


def schema_paths(schema: Mapping[str, Any], prefix: str = "spec") -> Iterator[str]:
    """Every declared property below ``schema`` (maps and lists are leaves, but for the
    properties of a list's objects, below ``<list>[]``)."""
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}"
        yield path
        yield from schema_paths(sub, path)
        if isinstance(sub.get("items"), Mapping):
            yield from schema_paths(sub["items"], f"{path}[]")


def used_paths(value: object, prefix: str = "spec") -> Iterator[str]:
    """Every object key set in an example spec (inside the declared objects only)."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            path = f"{prefix}.{key}"
            yield path
            yield from used_paths(sub, path)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                yield from used_paths(item, f"{prefix}[]")


class Recording(Mapping[str, Any]):
    """A read-only mapping that records every key looked up, present or not.

    Only objects with declared ``properties`` are wrapped; free-form maps (labels,
    extraParams) are handed over as they are, since their keys are data, not fields.
    """

    def __init__(
        self, data: Mapping[str, Any], schema: Mapping[str, Any], path: str, seen: set[str]
    ) -> None:
        self._data = data
        self._schema = schema
        self._path = path
        self._seen = seen

    def __getitem__(self, key: str) -> Any:
        path = f"{self._path}.{key}"
        self._seen.add(path)
        value = self._data[key]
        sub = self._schema.get("properties", {}).get(key, {})
        if isinstance(value, Mapping) and "properties" in sub:
            return Recording(value, sub, path, self._seen)
        items = sub.get("items", {})
        if isinstance(value, list) and "properties" in items:
            return [
                Recording(v, items, f"{path}[]", self._seen) if isinstance(v, Mapping) else v
                for v in value
            ]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def walk_schema(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk_schema(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from walk_schema(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from walk_schema(schema["additionalProperties"], f"{path}{{}}")


# -- examples -----------------------------------------------------------------------------


def test_examples_contain_credentials() -> None:
    assert len(EXAMPLE_CREDENTIALS) >= 2
    for path in EXAMPLES:
        assert credentials_in(path), f"{path.name} has no {model.KIND}"


@pytest.mark.parametrize("doc", EXAMPLE_CREDENTIALS)
def test_parse_spec_accepts_example(doc: dict[str, Any]) -> None:
    spec, name = doc["spec"], doc["metadata"]["name"]
    parsed = parsing.parse_spec(spec, name=name)
    assert parsed.request.token_url == spec.get("tokenURL", "")
    assert parsed.issuer_url == spec.get("issuerURL")
    if "clientSecretRef" in spec:
        assert parsed.secret_ref is not None
        assert parsed.secret_ref.name == spec["clientSecretRef"]["name"]
    assert parsed.target.name == spec.get("target", {}).get("name", f"{name}-token")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_client_secrets_opt_in(path: pathlib.Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for cred in credentials_in(path):
        spec = parsing.parse_spec(cred["spec"], name=cred["metadata"]["name"])
        for name in spec.secret_names:
            secret = secrets[name]  # every example brings the Secrets it refers to
            assert secret["metadata"]["labels"][model.CLIENT_SECRET_LABEL] == "true"
        wanted: list[tuple[str, str]] = []
        if spec.secret_ref is not None:
            wanted.append((spec.secret_ref.name, spec.secret_ref.client_secret_key))
            if "clientID" not in cred["spec"]:
                wanted.append((spec.secret_ref.name, spec.secret_ref.client_id_key))
        if spec.private_key_ref is not None:
            wanted.append((spec.private_key_ref.name, spec.private_key_ref.key))
            if spec.private_key_ref.certificate_key:
                wanted.append((spec.private_key_ref.name, spec.private_key_ref.certificate_key))
        if spec.client_certificate_ref is not None:
            wanted += [(spec.client_certificate_ref, k) for k in ("tls.crt", "tls.key")]
        for name, key in wanted:
            secret = secrets[name]
            assert key in set(secret.get("stringData", {})) | set(secret.get("data", {}))


def test_full_example_uses_every_field() -> None:
    declared = set(schema_paths(spec_schema()))
    used = {p for doc in credentials_in(FULL_EXAMPLE) for p in used_paths(doc["spec"])}
    assert declared - used == set(), "fields missing from clientcredential-full.yaml"


# -- the CRD and parse_spec agree ---------------------------------------------------------


def test_parse_spec_reads_exactly_the_declared_fields() -> None:
    schema = spec_schema()
    seen: set[str] = set()
    for doc in credentials_in(FULL_EXAMPLE):
        parsing.parse_spec(Recording(doc["spec"], schema, "spec", seen), name="x")
    declared = set(schema_paths(schema))
    assert declared - seen == set(), "declared in the CRD but never read by parse_spec"
    assert seen - declared == set(), "read by parse_spec but pruned by the API server"


def test_schema_defaults_and_enums_match_model() -> None:
    props = spec_schema()["properties"]
    assert props["authMethod"]["default"] == model.AuthMethod.AUTO.value
    assert props["authMethod"]["enum"] == [m.value for m in model.AuthMethod]
    ref = props["clientSecretRef"]["properties"]
    defaults = model.SecretRef(name="x")
    assert ref["clientIDKey"]["default"] == defaults.client_id_key
    assert ref["clientSecretKey"]["default"] == defaults.client_secret_key
    # Required-ness depends on other fields: CEL rules (tested in test_crd_admission.py).
    assert "required" not in spec_schema()
    key = props["privateKeyRef"]["properties"]
    assert key["key"]["default"] == model.DEFAULT_PRIVATE_KEY_KEY
    assertion = props["clientAssertion"]["properties"]
    assert assertion["algorithm"]["enum"] == list(model.ASSERTION_ALGORITHMS)
    assert durations.parse(assertion["lifetime"]["default"], field="x") == (
        model.DEFAULT_ASSERTION_LIFETIME
    )
    refresh = props["refresh"]["properties"]
    assert "1h" in refresh["defaultLifetime"]["description"]
    assert model.DEFAULT_LIFETIME.total_seconds() == 3600
    assert "30s" in refresh["minInterval"]["description"]
    assert model.DEFAULT_MIN_INTERVAL.total_seconds() == 30
    assert "default" not in props.get("target", {}).get("properties", {}).get("name", {})


def test_reserved_extra_params_are_refused_with_the_model_s_reasons() -> None:
    """Admission and parse_spec refuse the same parameters, saying the same thing."""
    rules = spec_schema()["properties"]["extraParams"]["x-kubernetes-validations"]
    messages = {
        match.group(1): rule["message"]
        for rule in rules
        if (match := re.fullmatch(r"!\('(\w+)' in self\)", rule["rule"]))
    }
    assert messages == {
        key: f"must not set {key}: {why}" for key, why in model.RESERVED_EXTRA_PARAMS.items()
    }


def test_names_match_model() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == f"{model.PLURAL}.{model.GROUP}"
    assert crd["spec"]["group"] == model.GROUP
    assert crd["spec"]["names"]["kind"] == model.KIND
    assert crd["spec"]["names"]["plural"] == model.PLURAL


DURATIONS = [
    ("30s", True),
    ("5m", True),
    ("1h30m", True),
    ("250ms", True),
    ("1.5h", True),
    ("0s", True),
    ("1h0m0.5s", True),
    ("", False),
    ("30", False),
    ("-5m", False),
    ("1d", False),
    ("5 m", False),
    ("m", False),
    (".5s", False),
    ("5m ", False),
    ("1us", False),
]


@pytest.mark.parametrize(("value", "valid"), DURATIONS, ids=[repr(v) for v, _ in DURATIONS])
def test_duration_pattern_agrees_with_parse_duration(value: str, valid: bool) -> None:
    pattern = spec_schema()["properties"]["refresh"]["properties"]["renewBefore"]["pattern"]
    assert bool(re.fullmatch(pattern, value)) is valid
    if valid:
        durations.parse(value, field="f")
    else:
        with pytest.raises(model.SpecError):
            durations.parse(value, field="f")


def duration_fields() -> dict[str, Mapping[str, Any]]:
    """Every string the CRD reads as a duration (by its pattern), by path."""
    pattern = spec_schema()["properties"]["refresh"]["properties"]["renewBefore"]["pattern"]
    return {
        path: node
        for path, node in walk_schema(spec_schema(), "spec")
        if node.get("pattern") == pattern
    }


def test_every_duration_has_bounds_in_both() -> None:
    assert set(duration_fields()) == set(durations.DURATION_BOUNDS)


@pytest.mark.parametrize("field", sorted(durations.DURATION_BOUNDS))
def test_duration_bounds_are_the_parser_s(field: str) -> None:
    """The CEL rule states the parser's bounds, with its message; Go's time.ParseDuration
    (which CEL's duration() is) and parse_duration agree on every value to the nanosecond."""
    low, high = durations.DURATION_BOUNDS[field]
    node = duration_fields()[field]
    (rule,) = node["x-kubernetes-validations"]
    lower = f"duration(self) >= duration('{durations.format_duration(low)}') && " if low else ""
    assert rule["rule"] == f"{lower}duration(self) <= duration('{durations.format_duration(high)}')"
    assert rule["message"] == durations.bounds_message(low, high)
    assert rule["message"].removeprefix("must be ") in " ".join(node["description"].split())
    # maxLength keeps the rule's cost estimate small (and the API server accepts the CRD).
    assert node["maxLength"] <= 64
    for value, valid in [
        (durations.format_duration(low), True),
        (durations.format_duration(high), True),
        (f"{durations.format_duration(high)}0.001ms", False),
        *([(f"{low.total_seconds() - 1e-9:.9f}s", False)] if low else []),
    ]:
        if valid:
            assert low <= durations.parse(value, field=field) <= high
        else:
            with pytest.raises(model.SpecError, match=rule["message"]):
                durations.parse(value, field=field)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("billing-api-token", True),
        ("a.b-c.d", True),
        ("a" * 253, True),
        ("Billing", False),
        ("-a", False),
        ("a_b", False),
        ("a" * 254, False),
    ],
)
def test_target_name_rules_agree_with_parse_spec(name: str, valid: bool) -> None:
    schema = spec_schema()["properties"]["target"]["properties"]["name"]
    admitted = len(name) <= schema["maxLength"] and bool(re.fullmatch(schema["pattern"], name))
    assert admitted is valid
    spec = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    spec["target"] = {"name": name}
    if valid:
        assert parsing.parse_spec(spec, name="x").target.name == name
    else:
        with pytest.raises(model.SpecError, match=r"spec\.target\.name"):
            parsing.parse_spec(spec, name="x")


# -- sizes (issue 14 section 3) ------------------------------------------------------------


def schema_size_bounds() -> dict[str, int]:
    """Every size bound of the spec's schema: maxLength, maxItems, maxProperties by path."""
    found = {}
    for path, node in walk_schema(spec_schema(), "spec"):
        for keyword in ("maxLength", "maxItems", "maxProperties"):
            if keyword in node:
                found[path] = node[keyword]
    return found


def test_size_bounds_are_the_parser_s() -> None:
    assert schema_size_bounds() == dict(bounds.SIZE_BOUNDS)


def test_every_free_string_list_and_map_has_a_bound() -> None:
    """A string without an enum, a list, a map: each has a size bound in the CRD."""
    unbounded = []
    for path, node in walk_schema(spec_schema(), "spec"):
        kind = node.get("type")
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


def test_fields_are_the_declared_ones() -> None:
    declared = set(schema_paths(spec_schema()))
    fields = {f"{parent}.{key}" for parent, keys in bounds.FIELDS.items() for key in keys}
    assert fields == declared
    objects = {path for path, node in walk_schema(spec_schema(), "spec") if "properties" in node}
    assert set(bounds.FIELDS) == objects


#: Required siblings, so that the parser reaches the field under test.
REQUIRED = {
    "spec.privateKeyRef": {"name": "k"},
    "spec.clientCertificateRef": {"name": "t"},
    "spec.serviceAccountRef": {"name": "sa", "audience": "aud"},
    "spec.caBundleRef": {"name": "ca"},
    "spec.clientSecretRef": {"name": "c"},
    "spec.rolloutRestart": {"targets": [{"kind": "Deployment", "name": "w"}]},
    "spec.grant.tokenExchange": {"subjectServiceAccountRef": {"name": "sa", "audience": "aud"}},
    "spec.grant.tokenExchange.subjectTokenSecretRef": {"name": "s"},
}
#: Lists of objects: the item at an index, valid, so that the list's bound is what fails.
ITEMS = {
    "spec.rolloutRestart.targets": lambda i: {"kind": "Deployment", "name": f"w{i}"},
    "spec.requestHeaders": lambda i: {"name": f"X-H{i}", "value": "v"},
}
#: Fields of a list's objects under an object of their own: the item, valid without them.
ITEM_PARENTS = {
    "valueFrom.secretKeyRef": {"valueFrom": {"secretKeyRef": {"name": "h", "key": "k"}}},
}


def spec_over(path: str, size: int) -> tuple[dict[str, Any], str, str]:
    """A valid spec but for ``path`` of ``size`` (characters or entries); the field the
    parser names and its message."""
    spec: dict[str, Any] = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    base = path.removesuffix("[]").removesuffix("{}")
    *parents, leaf = base.split(".")[1:]
    node = spec
    walked = "spec"
    for parent in parents:
        walked += f".{parent}"
        node = node.setdefault(parent, dict(REQUIRED.get(walked, {})))
    if leaf == "issuerURL":
        del spec["tokenURL"]
    bound = bounds.SIZE_BOUNDS[path]
    if path.endswith("[]"):
        node[leaf] = ["a" * size]
        return spec, f"{base}[0]", f"must be at most {bound} characters"
    if path.endswith("{}"):
        node[leaf] = {"k": "a" * size}
        return spec, f"{base}[k]", f"must be at most {bound} characters"
    if f"{path}[]" in bounds.SIZE_BOUNDS or path in ITEMS:
        item = ITEMS.get(path, lambda i: f"a{i}")
        node[leaf] = [item(i) for i in range(size)]
        return spec, path, f"must have at most {bound} items"
    if f"{path}{{}}" in bounds.SIZE_BOUNDS:
        node[leaf] = {f"k{i}": "v" for i in range(size)}
        return spec, path, f"must have at most {bound} entries"
    node[leaf] = "a" * size
    return spec, path, f"must be at most {bound} characters"


def item_field_over(path: str, size: int) -> tuple[dict[str, Any], str, str]:
    """:func:`spec_over` for a field of a list's objects (``<list>[].<field>``): the first
    item's."""
    items, leaf = path.split("[].")
    spec, _, _ = spec_over(items, 1)
    node = spec
    for part in items.split(".")[1:]:
        node = node[part]
    item = node[0]
    parent, _, name = leaf.rpartition(".")
    if parent:
        item.pop("value", None)  # exactly one of value and valueFrom
        item.update(ITEM_PARENTS[parent])
        for part in parent.split("."):
            item = item[part]
    item[name] = "a" * size
    return spec, f"{items}[0].{leaf}", f"must be at most {bounds.SIZE_BOUNDS[path]} characters"


@pytest.mark.parametrize("path", sorted(bounds.SIZE_BOUNDS))
def test_parse_spec_refuses_one_past_each_bound(path: str) -> None:
    """What the CRD refuses, parse_spec refuses too (an object stored before the bound),
    and so does it from the copy the operator keeps (bounds.retained)."""
    over = item_field_over if "[]." in path else spec_over
    spec, field, message = over(path, bounds.SIZE_BOUNDS[path] + 1)
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec, name="x")
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {message}")
    with pytest.raises(model.SpecError) as kept:
        parsing.parse_spec(bounds.retained(spec), name="x")
    assert str(kept.value) == str(caught.value)


def test_retained_is_bounded_and_keeps_only_declared_fields() -> None:
    """An object stored before the bounds (or before pruning) costs what the bounds allow."""
    stored = {
        "tokenURL": "https://a.example/" + "t" * 1_000_000,
        "clientSecretRef": {"name": "c", "unknown": "x" * 1_000_000},
        "scopes": ["s" * 100_000] * 10_000,
        "target": {"annotations": {"k" * 100_000: "v" * 100_000}},
        "extraParams": {f"p{i}": "x" for i in range(10_000)},
        "pruned": {"big": "x" * 1_000_000},
    }
    kept = bounds.retained(stored)
    assert set(kept) == {"tokenURL", "clientSecretRef", "scopes", "target", "extraParams"}
    assert kept["clientSecretRef"] == {"name": "c"}
    assert len(kept["tokenURL"]) == bounds.SIZE_BOUNDS["spec.tokenURL"] + 1
    assert len(kept["scopes"]) == bounds.SIZE_BOUNDS["spec.scopes"] + 1
    assert {len(s) for s in kept["scopes"]} == {bounds.SIZE_BOUNDS["spec.scopes[]"] + 1}
    ((key, value),) = kept["target"]["annotations"].items()
    assert len(key) == bounds.KEY_BOUNDS["spec.target.annotations"] + 1
    assert len(value) == bounds.SIZE_BOUNDS["spec.target.annotations{}"] + 1
    assert len(kept["extraParams"]) == bounds.SIZE_BOUNDS["spec.extraParams"] + 1
    assert len(json.dumps(kept)) < 100_000
    for doc in credentials_in(FULL_EXAMPLE):  # a valid spec is kept whole
        assert bounds.retained(doc["spec"]) == doc["spec"]
    assert bounds.retained(["not", "a", "map"]) == {}


def key_pattern(node: Mapping[str, Any]) -> str:
    (found,) = [
        match.group(1)
        for rule in node["x-kubernetes-validations"]
        if (match := re.search(r"k\.matches\(r'(.+?)'\)", rule["rule"]))
    ]
    return found


@pytest.mark.parametrize("field", ["spec.target.labels", "spec.target.annotations"])
def test_metadata_key_bound_is_the_crd_s(field: str) -> None:
    """The CRD's key pattern admits a 253-character prefix and a 63-character name, no
    more: the parser's KEY_BOUNDS."""
    node = spec_schema()["properties"]["target"]["properties"][field.rsplit(".", 1)[1]]
    pattern = key_pattern(node)
    longest = "a" * 253 + "/" + "b" * 63
    assert len(longest) == bounds.KEY_BOUNDS[field]
    assert re.fullmatch(pattern, longest)
    assert not re.fullmatch(pattern, "a" * 253 + "/" + "b" * 64)
    over = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    over["target"] = {field.rsplit(".", 1)[1]: {longest + "b": "v"}}
    with pytest.raises(model.SpecError, match=f"keys must be at most {len(longest)} characters"):
        parsing.parse_spec(over, name="x")


def test_extra_params_key_bound_is_the_crd_s() -> None:
    rules = [
        r["rule"] for r in spec_schema()["properties"]["extraParams"]["x-kubernetes-validations"]
    ]
    assert any(f"{{1,{bounds.KEY_BOUNDS['spec.extraParams']}}}" in rule for rule in rules)


@pytest.mark.parametrize(
    ("node_path", "bound", "message"),
    [
        (("target",), bounds.TARGET_METADATA_BOUND, bounds.TARGET_METADATA_MESSAGE),
        (("extraParams",), bounds.EXTRA_PARAMS_BOUND, bounds.EXTRA_PARAMS_MESSAGE),
    ],
    ids=["target", "extraParams"],
)
def test_total_rules_are_the_parser_s(node_path: tuple[str, ...], bound: int, message: str) -> None:
    node = spec_schema()
    for name in node_path:
        node = node["properties"][name]
    (rule,) = [r for r in node["x-kubernetes-validations"] if ".sum()" in r["rule"]]
    assert rule["rule"].endswith(f"<= {bound}")
    assert " ".join(rule["message"].split()) == message


def test_parse_spec_refuses_totals_over_the_bound_and_admits_them_at_it() -> None:
    base = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    labels = {f"l{i:02d}": "x" * 63 for i in range(32)}
    used = sum(len(k) + len(v) for k, v in labels.items())
    annotations = {f"a{i}": "x" * 4096 for i in range(3)}
    used += sum(len(k) + len(v) for k, v in annotations.items())
    annotations["rest"] = "x" * (bounds.TARGET_METADATA_BOUND - used - len("rest"))
    at = {**base, "target": {"labels": labels, "annotations": annotations}}
    parsing.parse_spec(at, name="x")
    annotations["rest"] += "x"
    with pytest.raises(model.SpecError, match="together must be at most 16384") as caught:
        parsing.parse_spec(at, name="x")
    assert caught.value.field == "spec.target.annotations"
    params = {f"p{i}": "x" * 4096 for i in range(3)}
    params["last"] = "x" * (bounds.EXTRA_PARAMS_BOUND - 3 * (2 + 4096) - len("last"))
    parsing.parse_spec({**base, "extraParams": params}, name="x")
    params["last"] += "x"
    with pytest.raises(model.SpecError, match="together must be at most 16384") as caught:
        parsing.parse_spec({**base, "extraParams": params}, name="x")
    assert caught.value.field == "spec.extraParams"


# -- documentation ------------------------------------------------------------------------


def test_every_schema_node_has_a_description() -> None:
    missing = [
        path
        for path, node in walk_schema(version_schema(), "")
        if not str(node.get("description", "")).strip()
    ]
    assert missing == []


def test_every_rule_has_a_message() -> None:
    for path, node in walk_schema(version_schema(), ""):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message") or rule.get("messageExpression"), (path, rule["rule"])


def test_printer_columns_are_described() -> None:
    (version,) = load_crd()["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        assert column.get("description"), column["name"]


# -- the target's shape (decision 0040) -----------------------------------------------------


def target_schema() -> dict[str, Any]:
    schema: dict[str, Any] = spec_schema()["properties"]["target"]
    return schema


def test_shape_enums_and_defaults_match_model() -> None:
    props = target_schema()["properties"]
    assert props["type"]["enum"] == [t.value for t in model.SecretType]
    # No schema default: spec.target stays as written (decision 0041 tells Delete set
    # from Delete by default the same way); the description states it.
    assert "default" not in props["type"]
    assert model.TargetSpec(name="x").type.value == "Opaque"
    assert "Opaque (the default)" in props["type"]["description"]
    username = props["dockerConfig"]["properties"]["username"]
    assert username["default"] == model.DEFAULT_REGISTRY_USERNAME


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("token", True),
        (".netrc", True),
        ("client.properties", True),
        ("a-b_c.D9", True),
        ("k" * 253, True),
        ("k" * 254, False),
        (".", False),
        ("..", False),
        ("..a", False),
        ("a/b", False),
        ("a b", False),
        ("", False),
    ],
)
def test_template_key_rules_agree_with_parse_spec(key: str, valid: bool) -> None:
    """The CEL rule on template keys (Kubernetes' IsConfigMapKey) and the parser agree."""
    data = target_schema()["properties"]["template"]["properties"]["data"]
    (rule,) = [r["rule"] for r in data["x-kubernetes-validations"] if "matches" in r["rule"]]
    pattern = re.search(r"k\.matches\('(.+?)'\)", rule)
    assert pattern is not None
    admitted = (
        bool(re.fullmatch(pattern.group(1), key))
        and len(key) <= bounds.KEY_BOUNDS["spec.target.template.data"]
        and key != "."
        and not key.startswith("..")
    )
    assert f"size(k) <= {bounds.KEY_BOUNDS['spec.target.template.data']}" in rule
    assert admitted is valid
    spec = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    spec["target"] = {"template": {"data": {key: "{{ access_token }}"}}}
    if valid:
        parsing.parse_spec(spec, name="x")
    else:
        with pytest.raises(model.SpecError, match=r"spec\.target\.template\.data"):
            parsing.parse_spec(spec, name="x")


def test_template_total_rule_is_the_parser_s() -> None:
    data = target_schema()["properties"]["template"]["properties"]["data"]
    (rule,) = [r for r in data["x-kubernetes-validations"] if ".sum()" in r["rule"]]
    assert rule["rule"].endswith(f"<= {bounds.TEMPLATE_BOUND}")
    assert " ".join(rule["message"].split()) == bounds.TEMPLATE_MESSAGE


def test_registry_pattern_is_the_parser_s() -> None:
    registry = target_schema()["properties"]["dockerConfig"]["properties"]["registry"]
    for host, valid in [
        ("europe-docker.pkg.dev", True),
        ("registry.example.com:5000", True),
        ("10.0.0.1:443", True),
        ("https://r.example", False),
        ("r.example/v2", False),
        ("R.example", False),
    ]:
        assert bool(re.fullmatch(registry["pattern"], host)) is valid, host
        spec = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
        spec["target"] = {
            "type": "kubernetes.io/dockerconfigjson",
            "dockerConfig": {"registry": host},
        }
        if valid:
            parsing.parse_spec(spec, name="x")
        else:
            with pytest.raises(model.SpecError, match="not a registry host"):
                parsing.parse_spec(spec, name="x")


@pytest.mark.parametrize("field", sorted(model.RESPONSE_MAPPING_FIELDS))
def test_response_mapping_rules_are_the_parser_s(field: str) -> None:
    """Each path's CEL rule is mapping.PATH_PATTERN with its message, and its bound the
    parser's (decision 0046)."""
    node = spec_schema()["properties"]["responseMapping"]["properties"][field]
    (rule,) = node["x-kubernetes-validations"]
    assert rule["rule"] == f"self.matches(r'{mapping.PATH_PATTERN}')"
    assert " ".join(rule["message"].split()) == mapping.PATH_MESSAGE
    assert node["maxLength"] == mapping.MAX_EXPRESSION_LENGTH


def test_response_mapping_object_rules_are_the_parser_s() -> None:
    node = spec_schema()["properties"]["responseMapping"]
    assert node["minProperties"] == 1
    (rule,) = node["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".expiresAt"
    spec = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}
    for raw, message in [
        ({}, "set at least one of"),
        ({"expiresIn": "a", "expiresAt": "b"}, rule["message"]),
    ]:
        with pytest.raises(model.SpecError, match=message):
            parsing.parse_spec({**spec, "responseMapping": raw}, name="x")
