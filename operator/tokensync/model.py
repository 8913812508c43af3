"""Typed view of a ClientCredential: its names, constants and frozen spec dataclasses.

Everything that reads or acts on a ClientCredential shares these types, down to the
kubectl plugin, so they live apart from the rules that build them from a stored spec
(:mod:`tokensync.parsing`). :class:`SpecError` is here, with the types, because every
layer may need to recognise a spec that cannot be acted on. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
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
#: Annotation on every Secret and ServiceAccount that proves a client: where that proof may
#: be presented. Token URLs, issuer URLs, origins or host names, separated by commas or
#: spaces; a credential pointing anywhere else is refused before a byte is sent (decision 0032).
ALLOWED_DESTINATIONS_ANNOTATION = f"{GROUP}/allowed-destinations"

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
    "grant_type": "set spec.grant.type (custom, with spec.grant.grantTypeURI, for a grant of "
    "the provider's own)",
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


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: the form Kubernetes uses in status."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_due(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC to the millisecond (truncated), trailing zeros left out as Go's
    RFC3339Nano leaves them out, so a whole second reads as :func:`format_time` writes it.

    For the times the operator acts at, ``status.nextRefreshAt`` and the refresh-at
    annotation (decision 0064): due times are spread within each second, and status read
    back after a restart, or compared with the time a Secret changed, is then the time the
    operator uses, not up to a second earlier.
    """
    utc = moment.astimezone(datetime.UTC)
    whole = utc.strftime("%Y-%m-%dT%H:%M:%S")
    millis = utc.microsecond // 1000
    return f"{whole}.{millis:03d}".rstrip("0") + "Z" if millis else f"{whole}Z"


#: The strings :func:`word` shares, at most :data:`WORDS_MAX` of them.
_words: dict[str, str] = {}
WORDS_MAX = 1024


def word(value: Any) -> Any:
    """One string per distinct value in the process, not one per credential (decision 0053):
    for values from a small vocabulary (Ready, True, TokenIssued, client_secret_basic...),
    which each status brings parsed from its own JSON. A ``str`` subclass (a StrEnum) is
    kept as it is. Bounded: status is written by whoever may patch it, so once
    :data:`WORDS_MAX` distinct values are shared, a new one is kept as it came (not
    interned, which some Python versions never free)."""
    if type(value) is not str:
        return value
    shared = _words.get(value)
    if shared is not None:
        return shared
    if len(_words) < WORDS_MAX:
        _words[value] = value
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One of ``status.conditions``, with metav1.Condition's fields (the CRD's schema has no
    others). Kept per credential as a slotted object rather than a dict (decision 0057)."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    observed_generation: int | None = None
    last_transition_time: str | None = None

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> Condition:
        """A condition as status holds it; its words shared (:func:`word`)."""
        return cls(
            type=word(raw.get("type")),
            status=word(raw.get("status")),
            reason=word(raw.get("reason")),
            message=raw.get("message"),
            observed_generation=raw.get("observedGeneration"),
            last_transition_time=raw.get("lastTransitionTime"),
        )

    def as_status(self) -> dict[str, Any]:
        """As written to status: the fields that are set."""
        fields = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": self.last_transition_time,
        }
        return {key: value for key, value in fields.items() if value is not None}


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
    #: No client authentication: only with a grant that carries its own proof (decision 0047).
    NONE = "none"
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


class GrantType(enum.StrEnum):
    """spec.grant.type: what the token request trades for a token (decision 0047)."""

    CLIENT_CREDENTIALS = "client_credentials"
    #: RFC 7523 section 2.1: an assertion signed with spec.privateKeyRef is the grant.
    JWT_BEARER = "jwt_bearer"
    #: RFC 8693: a subject token (a ServiceAccount token) is traded for another token.
    TOKEN_EXCHANGE = "token_exchange"
    #: The provider's own grant type URI (spec.grant.grantTypeURI), with spec.extraParams.
    CUSTOM = "custom"


JWT_BEARER_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 8693 section 3: a ServiceAccount token is a JWT.
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
#: The grant types RFC 6749 and its extensions name, which a custom grant must not reuse:
#: each has its typed form, or (authorization_code, password, refresh_token) needs a user
#: or a state that tokensync does not hold.
STANDARD_GRANT_TYPES = frozenset(
    {
        "client_credentials",
        "authorization_code",
        "password",
        "refresh_token",
        "implicit",
        JWT_BEARER_GRANT_TYPE,
        TOKEN_EXCHANGE_GRANT_TYPE,
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
    }
)
#: The form parameters each grant sets itself, which spec.extraParams must not set.
GRANT_PARAMS: Mapping[GrantType, frozenset[str]] = {
    GrantType.CLIENT_CREDENTIALS: frozenset(),
    GrantType.JWT_BEARER: frozenset({"assertion"}),
    GrantType.TOKEN_EXCHANGE: frozenset(
        {"subject_token", "subject_token_type", "requested_token_type"}
    ),
    GrantType.CUSTOM: frozenset(),
}


@dataclasses.dataclass(frozen=True, slots=True)
class TokenExchange:
    """spec.grant.tokenExchange: the RFC 8693 subject token and the token types.

    ``audience`` and ``resource`` are spec.audience and spec.resources, as for every grant.
    """

    #: The ServiceAccount whose token is the subject token, minted as for workload
    #: identity (the same opt-in annotation and RBAC). The parser requires it; None only
    #: where the caller brings the subject token itself (``tokensync fetch``).
    subject_service_account: ServiceAccountRef | None = None
    #: Or the token in another ClientCredential's target Secret (chaining): a Secret that
    #: tokensync manages, whose annotation allows the destination (decision 0047).
    subject_secret: SecretKeyRef | None = None
    subject_token_type: str = TOKEN_TYPE_JWT
    requested_token_type: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """spec.grant: absent, the client credentials grant, as before (decision 0047)."""

    type: GrantType = GrantType.CLIENT_CREDENTIALS
    #: The grant_type sent with ``custom``.
    uri: str | None = None
    token_exchange: TokenExchange | None = None
    #: Where refresh_token grants go (decision 0048); None: the token URL.
    refresh_url: str | None = None

    @property
    def grant_type(self) -> str:
        """The grant_type parameter on the wire."""
        match self.type:
            case GrantType.JWT_BEARER:
                return JWT_BEARER_GRANT_TYPE
            case GrantType.TOKEN_EXCHANGE:
                return TOKEN_EXCHANGE_GRANT_TYPE
            case GrantType.CUSTOM:
                return self.uri or ""
        return "client_credentials"

    @property
    def proves_client(self) -> bool:
        """Can the grant's own proof stand for the client (client authentication optional)?"""
        return self.type in (GrantType.JWT_BEARER, GrantType.TOKEN_EXCHANGE)


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
    #: The RFC 8693 subject token (spec.grant.tokenExchange), minted for this attempt.
    subject_token: str | None = dataclasses.field(default=None, repr=False)
    #: Set: this request is the refresh_token grant with it, not spec.grant (decision 0048).
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    #: The key of the client Secret that ``client_secret`` came from (status names it).
    client_secret_key: str | None = None
    #: (key, secret) of spec.clientSecretRef.fallbackClientSecretKeys present in the
    #: Secret, in order: tried when the server refuses ``client_secret`` (decision 0045).
    fallback_secrets: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)


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
class ResponseMapping:
    """spec.responseMapping: where a non-standard JSON response keeps the token's fields.

    Each is a path of the JMESPath subset that :mod:`tokensync.mapping` accepts (decision
    0046). A path that is set must find a value; one that is not set falls back to the
    RFC 6749 member: ``access_token`` (required), ``expires_in``, ``token_type`` (Bearer
    when absent) and ``scope``. At most one of ``expires_in`` and ``expires_at``.
    """

    access_token: str | None = None
    #: The lifetime in seconds (a number, or a string of digits).
    expires_in: str | None = None
    #: The expiry: seconds since the epoch (a number or a string of digits) or RFC 3339.
    expires_at: str | None = None
    token_type: str | None = None
    #: A string of space-separated scopes, or a list of strings.
    scope: str | None = None


#: spec.responseMapping's fields, by the name the spec uses, in the order they are read.
RESPONSE_MAPPING_FIELDS: Mapping[str, str] = {
    "accessToken": "access_token",
    "expiresIn": "expires_in",
    "expiresAt": "expires_at",
    "tokenType": "token_type",
    "scope": "scope",
}


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
    #: None: the response is read as RFC 6749 says.
    response_mapping: ResponseMapping | None = None
    #: spec.requestHeaders with their values, Secret-sourced ones read: sent on the token
    #: request and on discovery (decision 0044). Values may be API keys: never printed.
    headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    grant: Grant = Grant()


#: At most this many client secret keys are tried in one attempt (clientSecretKey and its
#: fallbacks): one for the new secret, one for the old, one for the one before (decision 0045).
MAX_CLIENT_SECRET_KEYS = 3


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    client_id_key: str = "client_id"
    client_secret_key: str = "client_secret"
    #: Keys tried in order after client_secret_key when the server answers invalid_client.
    fallback_client_secret_keys: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SecretKeyRef:
    """One key of an opted-in Secret in the credential's namespace."""

    name: str
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class RequestHeader:
    """spec.requestHeaders[]: a header with its value inline, or from a Secret's key."""

    name: str
    value: str | None = dataclasses.field(default=None, repr=False)
    secret: SecretKeyRef | None = None


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


class CreationPolicy(enum.StrEnum):
    """spec.target.creationPolicy: which Secret tokensync may write to (decision 0041)."""

    #: tokensync creates the Secret; an existing one it does not manage is refused.
    OWNER = "Owner"
    #: Like Owner, and an existing Secret handed over to this credential is taken over.
    ADOPT = "Adopt"
    #: Only tokensync's keys are written into a handed-over Secret that something else owns.
    MERGE = "Merge"


class DeletionPolicy(enum.StrEnum):
    """spec.target.deletionPolicy: does the Secret go with its ClientCredential?"""

    #: An ownerReference: the garbage collector deletes the Secret with the credential.
    DELETE = "Delete"
    #: No ownerReference: the Secret stays when the credential, or the CRD, is deleted.
    RETAIN = "Retain"


class SecretType(enum.StrEnum):
    """spec.target.type: the target Secret's type (decision 0040)."""

    OPAQUE = "Opaque"
    #: One key, .dockerconfigjson, with the token as the password of one registry.
    DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"


#: The registry user of spec.target.dockerConfig by default: the one Google Artifact
#: Registry and Container Registry take with an OAuth access token as the password.
DEFAULT_REGISTRY_USERNAME = "oauth2accesstoken"


@dataclasses.dataclass(frozen=True, slots=True)
class DockerConfig:
    """spec.target.dockerConfig: the registry the token is a password for."""

    registry: str
    username: str = DEFAULT_REGISTRY_USERNAME


@dataclasses.dataclass(frozen=True, slots=True)
class TargetTemplate:
    """spec.target.template: the target's keys, each with its template (sorted by key)."""

    data: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    creation_policy: CreationPolicy = CreationPolicy.OWNER
    #: Merge never puts an ownerReference, whatever this says (the parser refuses Delete
    #: set explicitly with Merge).
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    #: The Secret's type and data (decision 0040): set with ``type`` dockerconfigjson only.
    type: SecretType = SecretType.OPAQUE
    docker_config: DockerConfig | None = None
    template: TargetTemplate | None = None
    #: Where the token may be sent as another credential's subject token (chaining,
    #: decision 0047): written as the target's allowed-destinations annotation.
    allowed_destinations: tuple[str, ...] = ()

    @property
    def owned(self) -> bool:
        """Does the credential control the Secret's garbage collection (an ownerReference)?"""
        return (
            self.creation_policy is not CreationPolicy.MERGE
            and self.deletion_policy is DeletionPolicy.DELETE
        )


#: The workloads spec.rolloutRestart may name, all in group apps/v1.
ROLLOUT_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
#: spec.rolloutRestart.minInterval: the default, and the shortest allowed. A rollout takes
#: minutes; a shorter interval would let a token loop restart pods faster than they start.
DEFAULT_ROLLOUT_INTERVAL = datetime.timedelta(minutes=5)
MIN_ROLLOUT_INTERVAL = datetime.timedelta(seconds=30)


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutTarget:
    """A workload in the credential's namespace (there is no namespace field, on purpose)."""

    kind: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutRestart:
    """Workloads restarted after each new token (spec.rolloutRestart, decision 0042)."""

    targets: tuple[RolloutTarget, ...]
    min_interval: datetime.timedelta = DEFAULT_ROLLOUT_INTERVAL


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
    rollout_restart: RolloutRestart | None = None
    request_headers: tuple[RequestHeader, ...] = ()

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets a request is built from (client credentials, then header values),
        each once, in a fixed order."""
        names = [
            self.secret_ref.name if self.secret_ref else None,
            self.private_key_ref.name if self.private_key_ref else None,
            self.client_certificate_ref,
            *(h.secret.name if h.secret else None for h in self.request_headers),
        ]
        return tuple(dict.fromkeys(n for n in names if n))


@dataclasses.dataclass(frozen=True, slots=True)
class CABundleRef:
    """PEM certificates to trust for the token endpoint, from a ConfigMap or Secret."""

    kind: str  # "ConfigMap" or "Secret"
    name: str
    key: str = "ca.crt"
