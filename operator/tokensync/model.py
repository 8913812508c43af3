"""Typed view of a ClientCredential's spec, and its validation.

The CRD schema rejects most bad specs at admission; this module is the second line for
what a schema cannot express and for objects that predate a schema change. Parsing is
pure: it takes the raw ``spec`` mapping and returns frozen dataclasses or raises
:class:`SpecError` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import fractions
import re
from collections.abc import Mapping
from typing import Any

from tokensync import failures

GROUP = "tokensync.dev"
VERSION = "v1alpha1"
PLURAL = "clientcredentials"
KIND = "ClientCredential"

#: Annotation on a ClientCredential: any new value forces a fresh token now.
REFRESH_REQUESTED_ANNOTATION = f"{GROUP}/refresh-requested-at"
#: Label a Secret must carry to be usable as OAuth client credentials (confused deputy guard).
CLIENT_SECRET_LABEL = f"{GROUP}/client-secret"
#: Label on target Secrets that tokensync manages.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "tokensync"
#: Annotation on target Secrets carrying the token's expiry (RFC 3339).
EXPIRES_AT_ANNOTATION = f"{GROUP}/expires-at"
#: Annotation a ServiceAccount must carry before tokensync mints tokens for it (workload
#: identity federation): the audiences it may be used for, separated by commas or spaces.
TOKEN_AUDIENCES_ANNOTATION = f"{GROUP}/token-audiences"

DEFAULT_MIN_INTERVAL = datetime.timedelta(seconds=30)
DEFAULT_LIFETIME = datetime.timedelta(hours=1)
#: Client assertions are single-use proofs: short-lived, but longer than any clock skew.
DEFAULT_ASSERTION_LIFETIME = datetime.timedelta(minutes=2)
MIN_ASSERTION_LIFETIME = datetime.timedelta(seconds=10)
MAX_ASSERTION_LIFETIME = datetime.timedelta(hours=1)
#: Default keys in a private key Secret (the kubernetes.io/tls layout cert-manager writes).
DEFAULT_PRIVATE_KEY_KEY = "tls.key"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
#: Signing algorithms accepted in spec.clientAssertion.algorithm.
ASSERTION_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip

#: Longest duration accepted anywhere in a spec. Durations feed datetime arithmetic
#: (expiry minus renewBefore, issue time plus minInterval) that overflows past year 9999.
MAX_DURATION = datetime.timedelta(days=3650)

#: Form parameters tokensync sets itself, which extraParams must not set, and why.
RESERVED_EXTRA_PARAMS: Mapping[str, str] = {
    "grant_type": "tokensync always sends grant_type=client_credentials",
    "client_id": "set spec.clientID or spec.clientSecretRef.clientIDKey instead",
    "client_secret": "the client secret comes from the client Secret (spec.clientSecretRef)",
    "client_assertion": "set spec.authMethod to private_key_jwt, client_secret_jwt or "
    "workload_identity",
    "client_assertion_type": "set spec.authMethod to private_key_jwt, client_secret_jwt or "
    "workload_identity",
    "scope": "use spec.scopes",
    "audience": "use spec.audience",
    "resource": "use spec.resources",
}
#: Label and annotation prefix that tokensync owns on the target Secret.
_OWNED_KEY_PREFIX = f"{GROUP}/"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# RFC 6749 section 3.3: printable ASCII except space, double quote and backslash.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# ASCII digits only: \d would also take digits of other scripts, which float() accepts.
_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_MICROSECONDS = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: the form Kubernetes uses in status."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime.datetime | None:
    """Read an RFC 3339 timestamp (status, annotations); anything unreadable is None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


class SpecError(failures.Failure, ValueError):
    """A spec that cannot be acted on. ``field`` is the JSON path, e.g. ``spec.tokenURL``.

    Only a change of the spec can help (reason InvalidSpec, no retry).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            failures.Reason.INVALID_SPEC, f"{field}: {message}", kind=failures.Kind.SPEC
        )
        self.field = field


class AuthMethod(enum.StrEnum):
    """How the client authenticates to the token endpoint."""

    AUTO = "auto"
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    CLIENT_SECRET_JSON = "client_secret_json"
    CLIENT_SECRET_JWT = "client_secret_jwt"
    PRIVATE_KEY_JWT = "private_key_jwt"
    TLS_CLIENT_AUTH = "tls_client_auth"
    SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
    WORKLOAD_IDENTITY = "workload_identity"


#: Methods that need the client secret (spec.clientSecretRef).
SECRET_METHODS = frozenset(
    {
        AuthMethod.CLIENT_SECRET_BASIC,
        AuthMethod.CLIENT_SECRET_POST,
        AuthMethod.CLIENT_SECRET_JSON,
        AuthMethod.CLIENT_SECRET_JWT,
    }
)
#: Methods that authenticate with the TLS client certificate (RFC 8705).
TLS_METHODS = frozenset({AuthMethod.TLS_CLIENT_AUTH, AuthMethod.SELF_SIGNED_TLS_CLIENT_AUTH})
#: Methods that send a client_assertion (RFC 7523 / RFC 7521).
ASSERTION_METHODS = frozenset(
    {AuthMethod.CLIENT_SECRET_JWT, AuthMethod.PRIVATE_KEY_JWT, AuthMethod.WORKLOAD_IDENTITY}
)


@dataclasses.dataclass(frozen=True, slots=True)
class ClientAuthMaterial:
    """The client's identity and whatever proves it, read from Secrets. Never printed.

    ``client_secret`` for the client_secret_* methods; ``private_key`` (PEM or JWK text) and
    optionally its ``certificate`` (PEM) for private_key_jwt; ``tls_certificate`` and
    ``tls_key`` (PEM) for mTLS; ``external_assertion`` (a ServiceAccount token) for
    workload identity federation.
    """

    client_id: str
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    private_key: str | None = dataclasses.field(default=None, repr=False)
    certificate: str | None = dataclasses.field(default=None, repr=False)
    tls_certificate: str | None = dataclasses.field(default=None, repr=False)
    tls_key: str | None = dataclasses.field(default=None, repr=False)
    external_assertion: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class AssertionOptions:
    """How client assertions are built (spec.clientAssertion)."""

    #: The ``aud`` claim; None means the token endpoint URL.
    audience: str | None = None
    #: None: the key's natural algorithm (RS256, ES256/384/512, EdDSA, HS256).
    algorithm: str | None = None
    #: The ``kid`` header; None: the JWK's own kid, if any.
    key_id: str | None = None
    lifetime: datetime.timedelta = DEFAULT_ASSERTION_LIFETIME


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRequest:
    """Everything the token client needs besides the credentials themselves.

    ``token_url`` is empty when the spec names an issuer instead: discovery fills it in.
    """

    token_url: str
    auth_method: AuthMethod = AuthMethod.AUTO
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resources: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()
    assertion: AssertionOptions = AssertionOptions()


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    client_id_key: str = "client_id"
    client_secret_key: str = "client_secret"


@dataclasses.dataclass(frozen=True, slots=True)
class PrivateKeyRef:
    """A Secret holding the private key (PEM or JWK) that signs client assertions."""

    name: str
    key: str = DEFAULT_PRIVATE_KEY_KEY
    certificate_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccountRef:
    """Workload identity federation: a ServiceAccount token with this audience."""

    name: str
    audience: str


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to renew. At most one of ``renew_before`` / ``renew_before_percentage`` is set."""

    renew_before: datetime.timedelta | None = None
    renew_before_percentage: float | None = None
    min_interval: datetime.timedelta = DEFAULT_MIN_INTERVAL
    default_lifetime: datetime.timedelta = DEFAULT_LIFETIME


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ClientCredentialSpec:
    request: TokenRequest
    secret_ref: SecretRef | None
    client_id: str | None
    refresh: RefreshPolicy
    target: TargetSpec
    ca_bundle: CABundleRef | None = None
    issuer_url: str | None = None
    private_key_ref: PrivateKeyRef | None = None
    client_certificate_ref: str | None = None
    service_account_ref: ServiceAccountRef | None = None

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets holding client credentials, each once, in a fixed order."""
        names = [
            self.secret_ref.name if self.secret_ref else None,
            self.private_key_ref.name if self.private_key_ref else None,
            self.client_certificate_ref,
        ]
        return tuple(dict.fromkeys(n for n in names if n))


@dataclasses.dataclass(frozen=True, slots=True)
class CABundleRef:
    """PEM certificates to trust for the token endpoint, from a ConfigMap or Secret."""

    kind: str  # "ConfigMap" or "Secret"
    name: str
    key: str = "ca.crt"


def _parse_ca_bundle(raw: object) -> CABundleRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("spec.caBundleRef", "must be an object")
    kind = raw.get("kind", "ConfigMap")
    if kind not in ("ConfigMap", "Secret"):
        raise SpecError("spec.caBundleRef.kind", "must be ConfigMap or Secret")
    name = _required_str(raw, "name", parent="spec.caBundleRef")
    key = _optional_str(raw, "key", parent="spec.caBundleRef") or "ca.crt"
    return CABundleRef(kind=kind, name=name, key=key)


def parse_duration(value: object, *, field: str) -> datetime.timedelta:
    """Parse a Go-style duration (``90s``, ``5m``, ``1h30m``, ``250ms``); negative is an error.

    Exact to the microsecond (decimal fractions are summed as fractions, not floats) and at
    most :data:`MAX_DURATION`.
    """
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise SpecError(field, f"invalid duration {value!r}: use units ms, s, m, h (e.g. 1h30m)")
    micros = sum(
        fractions.Fraction(number) * _UNIT_MICROSECONDS[unit]
        for number, unit in _DURATION_PART.findall(value)
    )
    if micros > MAX_DURATION // datetime.timedelta(microseconds=1):
        raise SpecError(field, f"must be at most {MAX_DURATION.days * 24}h")
    return datetime.timedelta(microseconds=round(micros))


def _optional_str(raw: Mapping[str, Any], key: str, *, parent: str) -> str | None:
    """``raw[key]`` if set; an empty string is an error, not a request for the default."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError(f"{parent}.{key}", "must be a non-empty string")
    return value


def _required_str(raw: Mapping[str, Any], key: str, *, parent: str) -> str:
    value = _optional_str(raw, key, parent=parent)
    if value is None:
        raise SpecError(f"{parent}.{key}", "is required")
    return value


def _secret_name(value: str, *, field: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise SpecError(field, f"{value!r} is not a valid Secret name")
    return value


def _str_list(value: object, *, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(field, "must be a list of non-empty strings")
    return tuple(value)


def _scopes(value: object) -> tuple[str, ...]:
    scopes = _str_list(value, field="spec.scopes")
    for index, scope in enumerate(scopes):
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise SpecError(
                f"spec.scopes[{index}]",
                f"{scope!r} is not a scope token: use printable ASCII without spaces, double "
                "quotes or backslashes (one scope per list item)",
            )
    return scopes


def _str_map(value: object, *, field: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(field, "must be a map of strings")
    return tuple(sorted(value.items()))


def _extra_params(value: object) -> tuple[tuple[str, str], ...]:
    params = _str_map(value, field="spec.extraParams")
    for key, _ in params:
        if key in RESERVED_EXTRA_PARAMS:
            raise SpecError("spec.extraParams", f"must not set {key}: {RESERVED_EXTRA_PARAMS[key]}")
    return params


def _target_metadata(
    value: object, *, field: str, reserved: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    """Extra labels or annotations, refusing the keys that tokensync sets itself."""
    items = _str_map(value, field=field)
    owned = " and ".join([*reserved, f"keys under {_OWNED_KEY_PREFIX}"])
    for key, _ in items:
        if key in reserved or key.startswith(_OWNED_KEY_PREFIX):
            raise SpecError(field, f"must not set {key}: tokensync sets {owned} itself")
    return items


def _parse_refresh(raw: object) -> RefreshPolicy:
    if raw is None:
        return RefreshPolicy()
    if not isinstance(raw, Mapping):
        raise SpecError("spec.refresh", "must be an object")
    renew_before = None
    if raw.get("renewBefore") is not None:
        renew_before = parse_duration(raw["renewBefore"], field="spec.refresh.renewBefore")
    percentage = raw.get("renewBeforePercentage")
    if percentage is not None:
        if isinstance(percentage, bool) or not isinstance(percentage, int):
            raise SpecError("spec.refresh.renewBeforePercentage", "must be an integer")
        if not 1 <= percentage <= 99:
            raise SpecError("spec.refresh.renewBeforePercentage", "must be between 1 and 99")
    if renew_before is not None and percentage is not None:
        raise SpecError("spec.refresh", "set renewBefore or renewBeforePercentage, not both")
    min_interval = DEFAULT_MIN_INTERVAL
    if raw.get("minInterval") is not None:
        min_interval = parse_duration(raw["minInterval"], field="spec.refresh.minInterval")
    default_lifetime = DEFAULT_LIFETIME
    if raw.get("defaultLifetime") is not None:
        default_lifetime = parse_duration(
            raw["defaultLifetime"], field="spec.refresh.defaultLifetime"
        )
        if default_lifetime <= datetime.timedelta(0):
            raise SpecError("spec.refresh.defaultLifetime", "must be positive")
    return RefreshPolicy(
        renew_before=renew_before,
        renew_before_percentage=None if percentage is None else float(percentage),
        min_interval=min_interval,
        default_lifetime=default_lifetime,
    )


def _parse_secret_ref(raw: object) -> SecretRef | None:
    if raw is None:
        return None
    parent = "spec.clientSecretRef"
    if not isinstance(raw, Mapping):
        raise SpecError(parent, "must be an object")
    return SecretRef(
        name=_secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name"),
        client_id_key=_optional_str(raw, "clientIDKey", parent=parent) or "client_id",
        client_secret_key=_optional_str(raw, "clientSecretKey", parent=parent) or "client_secret",
    )


def _parse_private_key_ref(raw: object) -> PrivateKeyRef | None:
    if raw is None:
        return None
    parent = "spec.privateKeyRef"
    if not isinstance(raw, Mapping):
        raise SpecError(parent, "must be an object")
    return PrivateKeyRef(
        name=_secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name"),
        key=_optional_str(raw, "key", parent=parent) or DEFAULT_PRIVATE_KEY_KEY,
        certificate_key=_optional_str(raw, "certificateKey", parent=parent),
    )


def _parse_certificate_ref(raw: object) -> str | None:
    if raw is None:
        return None
    parent = "spec.clientCertificateRef"
    if not isinstance(raw, Mapping):
        raise SpecError(parent, "must be an object")
    return _secret_name(_required_str(raw, "name", parent=parent), field=f"{parent}.name")


def _parse_service_account_ref(raw: object) -> ServiceAccountRef | None:
    if raw is None:
        return None
    parent = "spec.serviceAccountRef"
    if not isinstance(raw, Mapping):
        raise SpecError(parent, "must be an object")
    name = _required_str(raw, "name", parent=parent)
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise SpecError(f"{parent}.name", f"{name!r} is not a valid ServiceAccount name")
    return ServiceAccountRef(name=name, audience=_required_str(raw, "audience", parent=parent))


def _parse_assertion(raw: object) -> AssertionOptions:
    if raw is None:
        return AssertionOptions()
    parent = "spec.clientAssertion"
    if not isinstance(raw, Mapping):
        raise SpecError(parent, "must be an object")
    algorithm = _optional_str(raw, "algorithm", parent=parent)
    if algorithm is not None and algorithm not in ASSERTION_ALGORITHMS:
        raise SpecError(f"{parent}.algorithm", f"must be one of {', '.join(ASSERTION_ALGORITHMS)}")
    lifetime = DEFAULT_ASSERTION_LIFETIME
    if raw.get("lifetime") is not None:
        lifetime = parse_duration(raw["lifetime"], field=f"{parent}.lifetime")
        if not MIN_ASSERTION_LIFETIME <= lifetime <= MAX_ASSERTION_LIFETIME:
            raise SpecError(f"{parent}.lifetime", "must be between 10s and 1h")
    return AssertionOptions(
        audience=_optional_str(raw, "audience", parent=parent),
        algorithm=algorithm,
        key_id=_optional_str(raw, "keyID", parent=parent),
        lifetime=lifetime,
    )


def _check_method(
    method: AuthMethod,
    *,
    secret_ref: SecretRef | None,
    private_key_ref: PrivateKeyRef | None,
    certificate_ref: str | None,
    service_account_ref: ServiceAccountRef | None,
) -> None:
    """Each method needs its material; ``auto`` needs at least one kind."""
    needs = {
        "spec.clientSecretRef": (method in SECRET_METHODS, secret_ref),
        "spec.privateKeyRef": (method is AuthMethod.PRIVATE_KEY_JWT, private_key_ref),
        "spec.clientCertificateRef": (method in TLS_METHODS, certificate_ref),
        "spec.serviceAccountRef": (method is AuthMethod.WORKLOAD_IDENTITY, service_account_ref),
    }
    for field, (needed, value) in needs.items():
        if needed and value is None:
            raise SpecError(field, f"is required with authMethod {method.value}")
    if method is AuthMethod.AUTO and all(value is None for _, value in needs.values()):
        raise SpecError(
            "spec.clientSecretRef",
            "is required (or spec.privateKeyRef, spec.clientCertificateRef or "
            "spec.serviceAccountRef)",
        )


def parse_spec(spec: Mapping[str, Any], *, name: str) -> ClientCredentialSpec:
    """Turn a raw ``spec`` into a :class:`ClientCredentialSpec` (``name`` is metadata.name)."""
    token_url = _optional_str(spec, "tokenURL", parent="spec")
    issuer_url = _optional_str(spec, "issuerURL", parent="spec")
    if (token_url is None) == (issuer_url is None):
        raise SpecError("spec.tokenURL", "set exactly one of tokenURL and issuerURL")
    method_raw = spec.get("authMethod")
    try:
        auth_method = AuthMethod.AUTO if method_raw is None else AuthMethod(method_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in AuthMethod)
        raise SpecError("spec.authMethod", f"must be one of {allowed}") from None

    secret_ref = _parse_secret_ref(spec.get("clientSecretRef"))
    private_key_ref = _parse_private_key_ref(spec.get("privateKeyRef"))
    certificate_ref = _parse_certificate_ref(spec.get("clientCertificateRef"))
    service_account_ref = _parse_service_account_ref(spec.get("serviceAccountRef"))
    _check_method(
        auth_method,
        secret_ref=secret_ref,
        private_key_ref=private_key_ref,
        certificate_ref=certificate_ref,
        service_account_ref=service_account_ref,
    )
    client_id = _optional_str(spec, "clientID", parent="spec")
    if client_id is None and secret_ref is None:
        raise SpecError("spec.clientID", "is required when spec.clientSecretRef is not set")

    target_raw = spec.get("target") or {}
    if not isinstance(target_raw, Mapping):
        raise SpecError("spec.target", "must be an object")
    target_name = _secret_name(
        _optional_str(target_raw, "name", parent="spec.target") or f"{name}-token",
        field="spec.target.name",
    )
    credential_secrets = {
        "spec.clientSecretRef.name": secret_ref.name if secret_ref else None,
        "spec.privateKeyRef.name": private_key_ref.name if private_key_ref else None,
        "spec.clientCertificateRef.name": certificate_ref,
    }
    for field, secret_name in credential_secrets.items():
        if target_name == secret_name:
            raise SpecError(
                "spec.target.name",
                f"the target Secret {target_name!r} must not be a Secret holding client "
                f"credentials ({field})",
            )
    target = TargetSpec(
        name=target_name,
        labels=_target_metadata(
            target_raw.get("labels"), field="spec.target.labels", reserved=(MANAGED_BY_LABEL,)
        ),
        annotations=_target_metadata(
            target_raw.get("annotations"), field="spec.target.annotations"
        ),
    )

    request = TokenRequest(
        token_url=token_url or "",
        auth_method=auth_method,
        scopes=_scopes(spec.get("scopes")),
        audience=_optional_str(spec, "audience", parent="spec"),
        resources=_str_list(spec.get("resources"), field="spec.resources"),
        extra_params=_extra_params(spec.get("extraParams")),
        assertion=_parse_assertion(spec.get("clientAssertion")),
    )
    return ClientCredentialSpec(
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
    )
