"""How large a ClientCredential spec may be, and what of it the operator keeps.

Any tenant who may create ClientCredentials writes these specs, and one operator holds
them all, so every free string, list and map has a size bound (issue 14 section 3). The
CRD states the bounds at admission; :mod:`tokensync.parsing` applies the same ones to
objects stored before the CRD had them; :func:`retained` is the copy of a spec the
operator keeps between attempts (``tracking.Record.spec``). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The size bound of every free string, list and map of a spec, by path: a string's
#: maxLength, a list's maxItems, a map's maxProperties; ``[]`` is a list's items, ``{}`` a
#: map's values. The CRD states the same bounds (tests/unit/test_crd_matches_model.py
#: compares them); the parser applies them to objects stored before the CRD had them, so
#: that what a tenant writes cannot outgrow what the operator keeps (issue 14 section 3).
SIZE_BOUNDS: Mapping[str, int] = {
    "spec.tokenURL": 2048,
    "spec.issuerURL": 2048,
    "spec.clientSecretRef.name": 253,
    "spec.clientSecretRef.clientIDKey": 253,
    "spec.clientSecretRef.clientSecretKey": 253,
    # clientSecretKey and at most two fallbacks: model.MAX_CLIENT_SECRET_KEYS in all.
    "spec.clientSecretRef.fallbackClientSecretKeys": 2,
    "spec.clientSecretRef.fallbackClientSecretKeys[]": 253,
    "spec.privateKeyRef.name": 253,
    "spec.privateKeyRef.key": 253,
    "spec.privateKeyRef.certificateKey": 253,
    "spec.clientCertificateRef.name": 253,
    "spec.serviceAccountRef.name": 253,
    "spec.serviceAccountRef.audience": 1024,
    "spec.clientAssertion.audience": 2048,
    "spec.clientAssertion.keyID": 1024,
    "spec.clientAssertion.lifetime": 64,
    "spec.caBundleRef.name": 253,
    "spec.caBundleRef.key": 253,
    "spec.clientID": 1024,
    "spec.scopes": 64,
    "spec.scopes[]": 256,
    "spec.audience": 2048,
    "spec.resources": 16,
    "spec.resources[]": 2048,
    "spec.extraParams": 32,
    "spec.extraParams{}": 4096,
    "spec.refresh.renewBefore": 64,
    "spec.refresh.minInterval": 64,
    "spec.refresh.defaultLifetime": 64,
    "spec.target.name": 253,
    "spec.target.labels": 32,
    "spec.target.labels{}": 63,
    "spec.target.annotations": 32,
    "spec.target.annotations{}": 4096,
    "spec.target.dockerConfig.registry": 253,
    "spec.target.dockerConfig.username": 256,
    "spec.target.template.data": 16,
    "spec.target.template.data{}": 16384,
    "spec.rolloutRestart.targets": 16,
    "spec.rolloutRestart.targets[].name": 253,
    "spec.rolloutRestart.minInterval": 64,
    # mapping.MAX_EXPRESSION_LENGTH: a path of at most about a hundred lookups.
    "spec.responseMapping.accessToken": 256,
    "spec.responseMapping.expiresIn": 256,
    "spec.responseMapping.expiresAt": 256,
    "spec.responseMapping.tokenType": 256,
    "spec.responseMapping.scope": 256,
    "spec.requestHeaders": 16,
    "spec.requestHeaders[].name": 256,
    "spec.requestHeaders[].value": 4096,
    "spec.requestHeaders[].valueFrom.secretKeyRef.name": 253,
    "spec.requestHeaders[].valueFrom.secretKeyRef.key": 253,
    "spec.grant.grantTypeURI": 2048,
    "spec.grant.refreshURL": 2048,
    "spec.grant.tokenExchange.subjectTokenSecretRef.name": 253,
    "spec.grant.tokenExchange.subjectTokenSecretRef.key": 253,
    "spec.target.allowedDestinations": 16,
    "spec.target.allowedDestinations[]": 2048,
    "spec.grant.tokenExchange.subjectServiceAccountRef.name": 253,
    "spec.grant.tokenExchange.subjectServiceAccountRef.audience": 1024,
    "spec.grant.tokenExchange.subjectTokenType": 2048,
    "spec.grant.tokenExchange.requestedTokenType": 2048,
}

#: The longest key of each map: a Kubernetes label or annotation key is a DNS-subdomain
#: prefix of up to 253 characters, "/" and a name of up to 63 (the CRD's key pattern says
#: so); a parameter name is at most 128 characters.
KEY_BOUNDS: Mapping[str, int] = {
    "spec.target.labels": 253 + 1 + 63,
    "spec.target.annotations": 253 + 1 + 63,
    "spec.extraParams": 128,
    # A Secret key: at most 253 characters of [-._a-zA-Z0-9].
    "spec.target.template.data": 253,
}

#: The CEL rules on totals: characters of keys plus values. The API server caps a Secret's
#: annotations at 256 KiB; these keep a credential's spec to tens of KiB.
TARGET_METADATA_BOUND = 16384
TARGET_METADATA_MESSAGE = (
    f"labels and annotations together must be at most {TARGET_METADATA_BOUND} characters "
    "(keys and values)"
)
EXTRA_PARAMS_BOUND = 16384
EXTRA_PARAMS_MESSAGE = f"names and values together must be at most {EXTRA_PARAMS_BOUND} characters"
TEMPLATE_BOUND = 16384
TEMPLATE_MESSAGE = f"keys and templates together must be at most {TEMPLATE_BOUND} characters"

#: The fields of each object of a spec: what parse_spec reads, and all the CRD declares.
FIELDS: Mapping[str, frozenset[str]] = {
    "spec": frozenset(
        {
            "tokenURL",
            "issuerURL",
            "clientSecretRef",
            "privateKeyRef",
            "clientCertificateRef",
            "serviceAccountRef",
            "clientAssertion",
            "caBundleRef",
            "clientID",
            "authMethod",
            "scopes",
            "audience",
            "resources",
            "extraParams",
            "refresh",
            "target",
            "rolloutRestart",
            "responseMapping",
            "requestHeaders",
            "grant",
        }
    ),
    "spec.grant": frozenset({"type", "grantTypeURI", "tokenExchange", "refreshURL"}),
    "spec.grant.tokenExchange": frozenset(
        {
            "subjectServiceAccountRef",
            "subjectTokenSecretRef",
            "subjectTokenType",
            "requestedTokenType",
        }
    ),
    "spec.grant.tokenExchange.subjectTokenSecretRef": frozenset({"name", "key"}),
    "spec.grant.tokenExchange.subjectServiceAccountRef": frozenset({"name", "audience"}),
    "spec.clientSecretRef": frozenset(
        {"name", "clientIDKey", "clientSecretKey", "fallbackClientSecretKeys"}
    ),
    "spec.privateKeyRef": frozenset({"name", "key", "certificateKey"}),
    "spec.clientCertificateRef": frozenset({"name"}),
    "spec.serviceAccountRef": frozenset({"name", "audience"}),
    "spec.clientAssertion": frozenset({"audience", "algorithm", "keyID", "lifetime"}),
    "spec.caBundleRef": frozenset({"kind", "name", "key"}),
    "spec.refresh": frozenset(
        {"renewBefore", "renewBeforePercentage", "minInterval", "defaultLifetime"}
    ),
    "spec.target": frozenset(
        {
            "name",
            "labels",
            "annotations",
            "creationPolicy",
            "deletionPolicy",
            "type",
            "dockerConfig",
            "template",
            "allowedDestinations",
        }
    ),
    "spec.target.dockerConfig": frozenset({"registry", "username"}),
    "spec.target.template": frozenset({"data"}),
    "spec.rolloutRestart": frozenset({"targets", "minInterval"}),
    "spec.responseMapping": frozenset(
        {"accessToken", "expiresIn", "expiresAt", "tokenType", "scope"}
    ),
    # A list of objects: ``[]`` is each item (bounded in number by SIZE_BOUNDS).
    "spec.rolloutRestart.targets[]": frozenset({"kind", "name"}),
    "spec.requestHeaders[]": frozenset({"name", "value", "valueFrom"}),
    "spec.requestHeaders[].valueFrom": frozenset({"secretKeyRef"}),
    "spec.requestHeaders[].valueFrom.secretKeyRef": frozenset({"name", "key"}),
}

#: How much of a string without a size bound (an enum: authMethod, algorithm) is kept.
_UNBOUNDED_KEPT = 256


def retained(spec: object) -> dict[str, Any]:
    """The part of a raw spec that parse_spec reads, each size cut to one past its bound.

    What the operator keeps of a credential between attempts (tracking.Record). Fields the
    CRD does not declare are dropped, and a string, list or map over its
    :data:`SIZE_BOUNDS` (or :data:`KEY_BOUNDS`) is cut to one character or entry past the
    bound: parse_spec still refuses it, naming the same field, while an object stored
    before the CRD had its bounds costs no more memory than the largest spec admitted now.
    """
    return _retained_object(spec, "spec") if isinstance(spec, Mapping) else {}


def _retained_object(raw: Mapping[str, Any], path: str) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key in FIELDS[path] & raw.keys():
        field, value = f"{path}.{key}", raw[key]
        if field in FIELDS and isinstance(value, Mapping):
            kept[key] = _retained_object(value, field)
        elif f"{field}[]" in FIELDS and isinstance(value, list):
            kept[key] = [
                _retained_object(item, f"{field}[]")
                if isinstance(item, Mapping)
                else _cut(item, _UNBOUNDED_KEPT + 1)
                for item in value[: SIZE_BOUNDS[field] + 1]
            ]
        elif f"{field}{{}}" in SIZE_BOUNDS and isinstance(value, Mapping):
            limit, longest = SIZE_BOUNDS[field] + 1, KEY_BOUNDS[field] + 1
            kept[key] = {
                _cut(k, longest): _cut(v, SIZE_BOUNDS[f"{field}{{}}"] + 1)
                for k, v in list(value.items())[:limit]
            }
        elif f"{field}[]" in SIZE_BOUNDS and isinstance(value, list):
            item_limit = SIZE_BOUNDS[f"{field}[]"] + 1
            kept[key] = [_cut(v, item_limit) for v in value[: SIZE_BOUNDS[field] + 1]]
        else:
            kept[key] = _cut(value, SIZE_BOUNDS.get(field, _UNBOUNDED_KEPT) + 1)
    return kept


def _cut(value: Any, limit: int) -> Any:
    return value[:limit] if isinstance(value, str) else value
