"""Reading a stored ClientCredential spec into the typed view of :mod:`tokensync.model`.

The CRD schema rejects most bad specs at admission; this module is the second line, for
what a schema cannot express and for objects stored before a schema change. It is apart
from the types because only an attempt and ``tokensync fetch --file`` parse a spec,
while every layer shares the types. Every refusal is a :class:`model.SpecError` naming the
offending field, the field the CRD would name. Pure: a raw ``spec`` mapping in, frozen
dataclasses out, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tokensync import bounds, durations, headers, mapping, model, ownership

#: Label and annotation prefix that tokensync owns on the target Secret.
_OWNED_KEY_PREFIX = f"{model.GROUP}/"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A registry host as image references name it: a DNS name (or IPv4 address), a port.
_REGISTRY = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(:[0-9]{1,5})?"
)
# Printable ASCII without space and colon.
_REGISTRY_USER = re.compile(r"[!-9;-~]+")
# A Secret's data key (Kubernetes IsConfigMapKey).
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# RFC 6749 section 3.3: printable ASCII except space, double quote and backslash.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# ASCII digits only: \d would also take digits of other scripts, which float() accepts.


def parse_spec(spec: Mapping[str, Any], *, name: str) -> model.ClientCredentialSpec:
    """Turn a raw ``spec`` into a :class:`~model.ClientCredentialSpec` (``name``: metadata.name)."""
    token_url = _optional_str(spec, "tokenURL", parent="spec")
    issuer_url = _optional_str(spec, "issuerURL", parent="spec")
    if (token_url is None) == (issuer_url is None):
        raise model.SpecError("spec.tokenURL", "set exactly one of tokenURL and issuerURL")
    method_raw = spec.get("authMethod")
    try:
        auth_method = model.AuthMethod.AUTO if method_raw is None else model.AuthMethod(method_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in model.AuthMethod)
        raise model.SpecError("spec.authMethod", f"must be one of {allowed}") from None

    secret_ref = _parse_secret_ref(spec.get("clientSecretRef"))
    private_key_ref = _parse_private_key_ref(spec.get("privateKeyRef"))
    certificate_ref = _parse_certificate_ref(spec.get("clientCertificateRef"))
    service_account_ref = _parse_service_account_ref(spec.get("serviceAccountRef"))
    grant = parse_grant(spec.get("grant"))
    _check_grant(grant, auth_method=auth_method, private_key_ref=private_key_ref)
    _check_method(
        auth_method,
        secret_ref=secret_ref,
        private_key_ref=private_key_ref,
        certificate_ref=certificate_ref,
        service_account_ref=service_account_ref,
        grant=grant,
    )
    client_id = _optional_str(spec, "clientID", parent="spec")
    if client_id is None and secret_ref is None:
        raise model.SpecError("spec.clientID", "is required when spec.clientSecretRef is not set")

    target_raw = spec.get("target") or {}
    if not isinstance(target_raw, Mapping):
        raise model.SpecError("spec.target", "must be an object")
    target_name = _secret_name(
        _optional_str(target_raw, "name", parent="spec.target") or f"{name}-token",
        field="spec.target.name",
    )
    request_headers = _parse_request_headers(spec.get("requestHeaders"))
    credential_secrets = {
        "spec.clientSecretRef.name": secret_ref.name if secret_ref else None,
        "spec.privateKeyRef.name": private_key_ref.name if private_key_ref else None,
        "spec.clientCertificateRef.name": certificate_ref,
        **{
            f"spec.requestHeaders[{i}].valueFrom.secretKeyRef.name": h.secret.name
            for i, h in enumerate(request_headers)
            if h.secret is not None
        },
    }
    for field, secret_name in credential_secrets.items():
        if target_name == secret_name:
            raise model.SpecError(
                "spec.target.name",
                f"the target Secret {target_name!r} must not be a Secret holding client "
                f"credentials ({field})",
            )
    creation, deletion = ownership.parse(target_raw)
    secret_type, docker_config, template = _parse_shape(target_raw)
    target = model.TargetSpec(
        name=target_name,
        creation_policy=creation,
        deletion_policy=deletion,
        type=secret_type,
        docker_config=docker_config,
        template=template,
        allowed_destinations=_str_list(
            target_raw.get("allowedDestinations"), field="spec.target.allowedDestinations"
        ),
        labels=_target_metadata(
            target_raw.get("labels"), field="spec.target.labels", reserved=(model.MANAGED_BY_LABEL,)
        ),
        annotations=_target_metadata(
            target_raw.get("annotations"), field="spec.target.annotations"
        ),
    )
    if _characters(target.labels) + _characters(target.annotations) > bounds.TARGET_METADATA_BOUND:
        raise model.SpecError("spec.target.annotations", bounds.TARGET_METADATA_MESSAGE)

    request = model.TokenRequest(
        token_url=token_url or "",
        auth_method=auth_method,
        scopes=_scopes(spec.get("scopes")),
        audience=_optional_str(spec, "audience", parent="spec"),
        resources=_str_list(spec.get("resources"), field="spec.resources"),
        extra_params=_extra_params(spec.get("extraParams"), grant=grant),
        assertion=_parse_assertion(spec.get("clientAssertion")),
        response_mapping=parse_response_mapping(spec.get("responseMapping")),
        grant=grant,
    )
    return model.ClientCredentialSpec(
        request=request,
        secret_ref=secret_ref,
        client_id=client_id,
        refresh=_parse_refresh(spec.get("refresh")),
        target=target,
        ca_bundle=_parse_ca_bundle(spec.get("caBundleRef")),
        issuer_url=issuer_url,
        private_key_ref=private_key_ref,
        client_certificate_ref=certificate_ref,
        service_account_ref=service_account_ref,
        rollout_restart=_parse_rollout_restart(spec.get("rolloutRestart")),
        request_headers=request_headers,
    )


def _parse_shape(
    raw: Mapping[str, Any],
) -> tuple[model.SecretType, model.DockerConfig | None, model.TargetTemplate | None]:
    """spec.target's type, dockerConfig and template (decision 0040). Templates are
    compiled at each attempt (``shape.check``), not here: Jinja is not the parser's."""
    parent = "spec.target"
    type_raw = raw.get("type")
    try:
        secret_type = model.SecretType.OPAQUE if type_raw is None else model.SecretType(type_raw)
    except ValueError:
        allowed = ", ".join(t.value for t in model.SecretType)
        raise model.SpecError(f"{parent}.type", f"must be one of {allowed}") from None
    docker_config = _parse_docker_config(raw.get("dockerConfig"))
    template = _parse_template(raw.get("template"))
    docker = model.SecretType.DOCKER_CONFIG_JSON
    if secret_type is docker and docker_config is None:
        raise model.SpecError(
            f"{parent}.dockerConfig", f"is required when {parent}.type is {docker.value}"
        )
    if secret_type is not docker and docker_config is not None:
        raise model.SpecError(
            f"{parent}.dockerConfig", f"may be set only when {parent}.type is {docker.value}"
        )
    if secret_type is docker and template is not None:
        raise model.SpecError(
            f"{parent}.template",
            f"cannot be combined with type {docker.value}, whose only key is .dockerconfigjson",
        )
    return secret_type, docker_config, template


def _parse_docker_config(raw: object) -> model.DockerConfig | None:
    if raw is None:
        return None
    parent = "spec.target.dockerConfig"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    registry = _optional_str(raw, "registry", parent=parent)
    username = _optional_str(raw, "username", parent=parent)
    if registry is None:
        raise model.SpecError(f"{parent}.registry", "is required")
    if not _REGISTRY.fullmatch(registry):
        raise model.SpecError(
            f"{parent}.registry",
            f"{registry!r} is not a registry host: a DNS name or address with an optional "
            "port, for example europe-docker.pkg.dev or registry.example.com:5000",
        )
    if username is not None and not _REGISTRY_USER.fullmatch(username):
        # The kubelet splits base64(username:password) at the first colon.
        raise model.SpecError(
            f"{parent}.username", "must be printable ASCII without spaces or colons"
        )
    return model.DockerConfig(
        registry=registry, username=username or model.DEFAULT_REGISTRY_USERNAME
    )


def _parse_template(raw: object) -> model.TargetTemplate | None:
    if raw is None:
        return None
    parent = "spec.target.template"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    field = f"{parent}.data"
    if raw.get("data") is None:
        raise model.SpecError(field, "is required")
    data = _str_map(raw.get("data"), field=field)
    if not data:
        raise model.SpecError(field, "must have at least one key")
    for key, _ in data:
        if not _SECRET_KEY.fullmatch(key) or key == "." or key.startswith(".."):
            raise model.SpecError(
                field,
                f"{key!r} is not a valid Secret key: use letters, digits, '-', '_' and '.' "
                "(not '.' alone, not starting with '..')",
            )
    if _characters(data) > bounds.TEMPLATE_BOUND:
        raise model.SpecError(field, bounds.TEMPLATE_MESSAGE)
    return model.TargetTemplate(data=data)


def _parse_secret_ref(raw: object) -> model.SecretRef | None:
    if raw is None:
        return None
    parent = "spec.clientSecretRef"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    secret_key = _optional_str(raw, "clientSecretKey", parent=parent) or "client_secret"
    field = f"{parent}.fallbackClientSecretKeys"
    fallbacks = _str_list(raw.get("fallbackClientSecretKeys"), field=field)
    for index, key in enumerate(fallbacks):
        _check_secret_key(key, field=f"{field}[{index}]")
    if len({secret_key, *fallbacks}) != 1 + len(fallbacks):
        raise model.SpecError(field, "must list each key once, and not clientSecretKey")
    return model.SecretRef(
        name=_secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name"),
        client_id_key=_optional_str(raw, "clientIDKey", parent=parent) or "client_id",
        client_secret_key=secret_key,
        fallback_client_secret_keys=fallbacks,
    )


def _parse_request_headers(raw: object) -> tuple[model.RequestHeader, ...]:
    """spec.requestHeaders: each an allowed name with a value inline or from a Secret
    (decision 0044). A value is never part of a message."""
    if raw is None:
        return ()
    field = "spec.requestHeaders"
    if not isinstance(raw, list):
        raise model.SpecError(field, "must be a list of {name, value} or {name, valueFrom}")
    _check_count(raw, field=field, unit="items")
    found: list[model.RequestHeader] = []
    for index, item in enumerate(raw):
        at = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise model.SpecError(at, "must be an object with name and value or valueFrom")
        name = _required_str(item, "name", parent=at)
        _check_length(name, field=f"{at}.name", bound=f"{field}[].name")
        problem = headers.name_problem(name)
        if problem is not None:
            raise model.SpecError(f"{at}.name", problem)
        if any(h.name.lower() == name.lower() for h in found):
            raise model.SpecError(f"{at}.name", f"{name} is listed twice")
        value, source = item.get("value"), item.get("valueFrom")
        if (value is None) == (source is None):
            raise model.SpecError(at, "set exactly one of value and valueFrom")
        if value is not None:
            if not isinstance(value, str):
                raise model.SpecError(f"{at}.value", "must be a string")
            _check_length(value, field=f"{at}.value", bound=f"{field}[].value")
            if not headers.valid_value(value):
                raise model.SpecError(
                    f"{at}.value",
                    "must be one line of visible ASCII characters (spaces and tabs inside)",
                )
            found.append(model.RequestHeader(name=name, value=value))
            continue
        found.append(model.RequestHeader(name=name, secret=_parse_secret_key_ref(source, at=at)))
    return tuple(found)


def _parse_secret_key_ref(raw: object, *, at: str) -> model.SecretKeyRef:
    parent = f"{at}.valueFrom"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object with secretKeyRef")
    ref = raw.get("secretKeyRef")
    parent = f"{parent}.secretKeyRef"
    if not isinstance(ref, Mapping):
        raise model.SpecError(parent, "must be an object with name and key")
    bound = "spec.requestHeaders[].valueFrom.secretKeyRef"
    name = _required_str(ref, "name", parent=parent)
    _check_length(name, field=f"{parent}.name", bound=f"{bound}.name")
    key = _required_str(ref, "key", parent=parent)
    _check_length(key, field=f"{parent}.key", bound=f"{bound}.key")
    _check_secret_key(key, field=f"{parent}.key")
    return model.SecretKeyRef(name=_secret_name(name, field=f"{parent}.name"), key=key)


def _check_secret_key(key: str, *, field: str) -> None:
    if not _SECRET_KEY.fullmatch(key):
        raise model.SpecError(
            field, f"{key!r} is not a valid Secret key: use letters, digits, '-', '_' and '.'"
        )


def _parse_private_key_ref(raw: object) -> model.PrivateKeyRef | None:
    if raw is None:
        return None
    parent = "spec.privateKeyRef"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    return model.PrivateKeyRef(
        name=_secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name"),
        key=_optional_str(raw, "key", parent=parent) or model.DEFAULT_PRIVATE_KEY_KEY,
        certificate_key=_optional_str(raw, "certificateKey", parent=parent),
    )


def _parse_certificate_ref(raw: object) -> str | None:
    if raw is None:
        return None
    parent = "spec.clientCertificateRef"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    return _secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name")


def _parse_service_account_ref(
    raw: object, *, parent: str = "spec.serviceAccountRef"
) -> model.ServiceAccountRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    name = _required_str(raw, "name", parent=parent)
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise model.SpecError(f"{parent}.name", f"{name!r} is not a valid ServiceAccount name")
    return model.ServiceAccountRef(
        name=name, audience=_required_str(raw, "audience", parent=parent)
    )


# An absolute URI (RFC 3986 section 3): a scheme, a colon, then printable ASCII.
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[!-~]+")


def parse_grant(raw: object) -> model.Grant:
    """spec.grant (decision 0047); absent, the client credentials grant."""
    if raw is None:
        return model.Grant()
    parent = "spec.grant"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    type_raw = raw.get("type", model.GrantType.CLIENT_CREDENTIALS.value)
    try:
        grant_type = model.GrantType(type_raw)
    except ValueError:
        allowed = ", ".join(t.value for t in model.GrantType)
        raise model.SpecError(f"{parent}.type", f"must be one of {allowed}") from None
    uri = _optional_str(raw, "grantTypeURI", parent=parent)
    exchange_raw = raw.get("tokenExchange")
    exchange = _parse_token_exchange(exchange_raw)
    if (uri is not None) != (grant_type is model.GrantType.CUSTOM):
        raise model.SpecError(
            f"{parent}.grantTypeURI", "is required with type custom, and only then"
        )
    if uri is not None:
        if uri in model.STANDARD_GRANT_TYPES:
            raise model.SpecError(
                f"{parent}.grantTypeURI",
                f"{uri!r} is a standard grant type: use its type, or it is not supported",
            )
        _check_uri(uri, field=f"{parent}.grantTypeURI")
    if (exchange_raw is not None) != (grant_type is model.GrantType.TOKEN_EXCHANGE):
        raise model.SpecError(
            f"{parent}.tokenExchange", "is required with type token_exchange, and only then"
        )
    return model.Grant(
        type=grant_type,
        uri=uri,
        token_exchange=exchange,
        refresh_url=_optional_str(raw, "refreshURL", parent=parent),
    )


def _parse_token_exchange(raw: object) -> model.TokenExchange | None:
    if raw is None:
        return None
    parent = "spec.grant.tokenExchange"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    types = {}
    for key in ("subjectTokenType", "requestedTokenType"):
        value = _optional_str(raw, key, parent=parent)
        if value is not None:
            _check_uri(value, field=f"{parent}.{key}")
        types[key] = value
    chained = _parse_subject_secret(raw.get("subjectTokenSecretRef"))
    subject = _parse_service_account_ref(
        raw.get("subjectServiceAccountRef"), parent=f"{parent}.subjectServiceAccountRef"
    )
    if (subject is None) == (chained is None):
        raise model.SpecError(
            f"{parent}.subjectServiceAccountRef",
            "set exactly one of subjectServiceAccountRef and subjectTokenSecretRef",
        )
    return model.TokenExchange(
        subject_service_account=subject,
        subject_secret=chained,
        subject_token_type=types["subjectTokenType"] or model.TOKEN_TYPE_JWT,
        requested_token_type=types["requestedTokenType"],
    )


def _parse_subject_secret(raw: object) -> model.SecretKeyRef | None:
    """tokenExchange.subjectTokenSecretRef: another credential's target, key access_token
    by default (a templated target names its key)."""
    if raw is None:
        return None
    parent = "spec.grant.tokenExchange.subjectTokenSecretRef"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    name = _secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name")
    key = _optional_str(raw, "key", parent=parent) or "access_token"
    _check_secret_key(key, field=f"{parent}.key")
    return model.SecretKeyRef(name=name, key=key)


def _check_uri(value: str, *, field: str) -> None:
    if not _URI.fullmatch(value):
        raise model.SpecError(field, "must be an absolute URI, such as urn:example:grant")


def _check_grant(
    grant: model.Grant,
    *,
    auth_method: model.AuthMethod,
    private_key_ref: model.PrivateKeyRef | None,
) -> None:
    if grant.type is model.GrantType.JWT_BEARER and private_key_ref is None:
        raise model.SpecError(
            "spec.privateKeyRef", "is required with grant type jwt_bearer (it signs the assertion)"
        )
    if auth_method is model.AuthMethod.NONE and grant.type is model.GrantType.CLIENT_CREDENTIALS:
        raise model.SpecError(
            "spec.authMethod", "none is only for a grant other than client_credentials"
        )


def _check_method(
    method: model.AuthMethod,
    *,
    secret_ref: model.SecretRef | None,
    private_key_ref: model.PrivateKeyRef | None,
    certificate_ref: str | None,
    service_account_ref: model.ServiceAccountRef | None,
    grant: model.Grant,
) -> None:
    """Each method needs its material; ``auto`` needs at least one kind, unless the grant
    proves the client itself."""
    needs = {
        "spec.clientSecretRef": (method in model.SECRET_METHODS, secret_ref),
        "spec.privateKeyRef": (method is model.AuthMethod.PRIVATE_KEY_JWT, private_key_ref),
        "spec.clientCertificateRef": (method in model.TLS_METHODS, certificate_ref),
        "spec.serviceAccountRef": (
            method is model.AuthMethod.WORKLOAD_IDENTITY,
            service_account_ref,
        ),
    }
    for field, (needed, value) in needs.items():
        if needed and value is None:
            raise model.SpecError(field, f"is required with authMethod {method.value}")
    if (
        method is model.AuthMethod.AUTO
        and not grant.proves_client
        and all(value is None for _, value in needs.values())
    ):
        raise model.SpecError(
            "spec.clientSecretRef",
            "is required (or spec.privateKeyRef, spec.clientCertificateRef or "
            "spec.serviceAccountRef)",
        )


def _parse_assertion(raw: object) -> model.AssertionOptions:
    if raw is None:
        return model.AssertionOptions()
    parent = "spec.clientAssertion"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    algorithm = _optional_str(raw, "algorithm", parent=parent)
    if algorithm is not None and algorithm not in model.ASSERTION_ALGORITHMS:
        raise model.SpecError(
            f"{parent}.algorithm", f"must be one of {', '.join(model.ASSERTION_ALGORITHMS)}"
        )
    lifetime = model.DEFAULT_ASSERTION_LIFETIME
    if raw.get("lifetime") is not None:
        lifetime = durations.parse(raw["lifetime"], field=f"{parent}.lifetime")
    return model.AssertionOptions(
        audience=_optional_str(raw, "audience", parent=parent),
        algorithm=algorithm,
        key_id=_optional_str(raw, "keyID", parent=parent),
        lifetime=lifetime,
    )


def parse_response_mapping(raw: object) -> model.ResponseMapping | None:
    """spec.responseMapping: each path compiled once here, before any request (decision 0046)."""
    if raw is None:
        return None
    parent = "spec.responseMapping"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    paths: dict[str, str] = {}
    for key, attribute in model.RESPONSE_MAPPING_FIELDS.items():
        expression = _optional_str(raw, key, parent=parent)
        if expression is not None:
            mapping.compile_path(expression, field=f"{parent}.{key}")
            paths[attribute] = expression
    if not paths:
        raise model.SpecError(
            parent, f"set at least one of {', '.join(model.RESPONSE_MAPPING_FIELDS)}"
        )
    if "expires_in" in paths and "expires_at" in paths:
        raise model.SpecError(f"{parent}.expiresAt", "set expiresIn or expiresAt, not both")
    return model.ResponseMapping(**paths)


def _parse_refresh(raw: object) -> model.RefreshPolicy:
    if raw is None:
        return model.RefreshPolicy()
    if not isinstance(raw, Mapping):
        raise model.SpecError("spec.refresh", "must be an object")
    renew_before = None
    if raw.get("renewBefore") is not None:
        renew_before = durations.parse(raw["renewBefore"], field="spec.refresh.renewBefore")
    percentage = raw.get("renewBeforePercentage")
    if percentage is not None:
        if isinstance(percentage, bool) or not isinstance(percentage, int):
            raise model.SpecError("spec.refresh.renewBeforePercentage", "must be an integer")
        if not 1 <= percentage <= 99:
            raise model.SpecError("spec.refresh.renewBeforePercentage", "must be between 1 and 99")
    if renew_before is not None and percentage is not None:
        raise model.SpecError("spec.refresh", "set renewBefore or renewBeforePercentage, not both")
    min_interval = model.DEFAULT_MIN_INTERVAL
    if raw.get("minInterval") is not None:
        min_interval = durations.parse(raw["minInterval"], field="spec.refresh.minInterval")
    default_lifetime = model.DEFAULT_LIFETIME
    if raw.get("defaultLifetime") is not None:
        default_lifetime = durations.parse(
            raw["defaultLifetime"], field="spec.refresh.defaultLifetime"
        )
    return model.RefreshPolicy(
        renew_before=renew_before,
        renew_before_percentage=None if percentage is None else float(percentage),
        min_interval=min_interval,
        default_lifetime=default_lifetime,
    )


def _parse_rollout_restart(raw: object) -> model.RolloutRestart | None:
    """spec.rolloutRestart: workloads of this namespace only, each named once (decision 0042)."""
    if raw is None:
        return None
    parent = "spec.rolloutRestart"
    if not isinstance(raw, Mapping):
        raise model.SpecError(parent, "must be an object")
    items = raw.get("targets")
    field = f"{parent}.targets"
    if not isinstance(items, list) or not items:
        raise model.SpecError(field, "must be a non-empty list of {kind, name} objects")
    _check_count(items, field=field, unit="items")
    targets: list[model.RolloutTarget] = []
    for index, item in enumerate(items):
        at = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise model.SpecError(at, "must be an object with kind and name")
        kind = _required_str(item, "kind", parent=at)
        if kind not in model.ROLLOUT_KINDS:
            raise model.SpecError(f"{at}.kind", f"must be one of {', '.join(model.ROLLOUT_KINDS)}")
        name = _required_str(item, "name", parent=at)
        _check_length(name, field=f"{at}.name", bound=f"{field}[].name")
        if not _DNS_SUBDOMAIN.fullmatch(name):
            raise model.SpecError(f"{at}.name", f"{name!r} is not a valid {kind} name")
        found = model.RolloutTarget(kind=kind, name=name)
        if found in targets:
            raise model.SpecError(at, f"{kind} {name!r} is listed twice")
        targets.append(found)
    min_interval = model.DEFAULT_ROLLOUT_INTERVAL
    if raw.get("minInterval") is not None:
        min_interval = durations.parse(raw["minInterval"], field=f"{parent}.minInterval")
    return model.RolloutRestart(targets=tuple(targets), min_interval=min_interval)


def _parse_ca_bundle(raw: object) -> model.CABundleRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise model.SpecError("spec.caBundleRef", "must be an object")
    kind = raw.get("kind", "ConfigMap")
    if kind not in ("ConfigMap", "Secret"):
        raise model.SpecError("spec.caBundleRef.kind", "must be ConfigMap or Secret")
    name = _required_str(raw, "name", parent="spec.caBundleRef")
    key = _optional_str(raw, "key", parent="spec.caBundleRef") or "ca.crt"
    return model.CABundleRef(kind=kind, name=name, key=key)


def _scopes(value: object) -> tuple[str, ...]:
    scopes = _str_list(value, field="spec.scopes")
    for index, scope in enumerate(scopes):
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise model.SpecError(
                f"spec.scopes[{index}]",
                f"{scope!r} is not a scope token: use printable ASCII without spaces, double "
                "quotes or backslashes (one scope per list item)",
            )
    return scopes


def _extra_params(value: object, *, grant: model.Grant) -> tuple[tuple[str, str], ...]:
    params = _str_map(value, field="spec.extraParams")
    for key, _ in params:
        if key in model.GRANT_PARAMS[grant.type]:
            raise model.SpecError(
                "spec.extraParams", f"must not set {key}: grant type {grant.type.value} sets it"
            )
    for key, _ in params:
        if key in model.RESERVED_EXTRA_PARAMS:
            raise model.SpecError(
                "spec.extraParams", f"must not set {key}: {model.RESERVED_EXTRA_PARAMS[key]}"
            )
    if _characters(params) > bounds.EXTRA_PARAMS_BOUND:
        raise model.SpecError("spec.extraParams", bounds.EXTRA_PARAMS_MESSAGE)
    return params


def _characters(items: tuple[tuple[str, str], ...]) -> int:
    return sum(len(key) + len(value) for key, value in items)


def _target_metadata(
    value: object, *, field: str, reserved: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    """Extra labels or annotations, refusing the keys that tokensync sets itself."""
    items = _str_map(value, field=field)
    owned = " and ".join([*reserved, f"keys under {_OWNED_KEY_PREFIX}"])
    for key, _ in items:
        if key in reserved or key.startswith(_OWNED_KEY_PREFIX):
            raise model.SpecError(field, f"must not set {key}: tokensync sets {owned} itself")
    return items


def _optional_str(raw: Mapping[str, Any], key: str, *, parent: str) -> str | None:
    """``raw[key]`` if set; an empty string is an error, not a request for the default."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise model.SpecError(f"{parent}.{key}", "must be a non-empty string")
    _check_length(value, field=f"{parent}.{key}")
    return value


def _check_length(value: str, *, field: str, bound: str | None = None) -> None:
    """Refuse a string longer than its ``bounds.SIZE_BOUNDS`` entry (``bound``: another path)."""
    limit = bounds.SIZE_BOUNDS.get(bound or field)
    if limit is not None and len(value) > limit:
        raise model.SpecError(field, f"must be at most {limit} characters")


def _check_count(value: Mapping[str, Any] | list[Any], *, field: str, unit: str) -> None:
    limit = bounds.SIZE_BOUNDS.get(field)
    if limit is not None and len(value) > limit:
        raise model.SpecError(field, f"must have at most {limit} {unit}")


def _required_str(raw: Mapping[str, Any], key: str, *, parent: str) -> str:
    value = _optional_str(raw, key, parent=parent)
    if value is None:
        raise model.SpecError(f"{parent}.{key}", "is required")
    return value


def _secret_name(value: str, *, field: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise model.SpecError(field, f"{value!r} is not a valid Secret name")
    return value


def _str_list(value: object, *, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise model.SpecError(field, "must be a list of non-empty strings")
    _check_count(value, field=field, unit="items")
    for index, item in enumerate(value):
        _check_length(item, field=f"{field}[{index}]", bound=f"{field}[]")
    return tuple(value)


def _str_map(value: object, *, field: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise model.SpecError(field, "must be a map of strings")
    _check_count(value, field=field, unit="entries")
    longest = bounds.KEY_BOUNDS.get(field)
    for key, item in value.items():
        if longest is not None and len(key) > longest:
            raise model.SpecError(field, f"keys must be at most {longest} characters")
        _check_length(item, field=f"{field}[{key}]", bound=f"{field}{{}}")
    return tuple(sorted(value.items()))
