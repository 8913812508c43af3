"""Why an attempt failed, and what may be done about it: every Ready reason in one place.

Each step of an attempt either returns a value or raises a :class:`Failure`, and the failure
says itself how it is handled (its :class:`Kind`), so the code that raises it does not also
decide the retry (``outcome`` does). The hierarchy::

    Failure                 reason (a Reason), message safe to show anywhere, kind, retry_after
     +-- TokenError         from the token endpoint or its discovery; + status_code, error_code
     +-- model.SpecError    the spec cannot be acted on (Kind.SPEC, Reason.INVALID_SPEC)
     +-- sources.SourceProblem   a Secret or ServiceAccount holding the client's proof

    ApiError                a Kubernetes API request failed (kube.py raises it);
                            :func:`from_api_error` turns it into a transient Failure

Pure: no I/O, and no kopf, kubernetes or httpx imports. README's table of Ready reasons is
generated from :data:`EXPLAINED` (``make docs``), and a test fails when the two differ.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """How a failure is retried."""

    #: Only a change of the spec can help: no retry until the spec changes.
    SPEC = "spec"
    #: A slow retry, and an immediate one when the spec or a client Secret changes.
    PERMANENT = "permanent"
    #: Backoff with full jitter; a token that is still valid stays Ready.
    TRANSIENT = "transient"


class Reason(enum.StrEnum):
    """Every reason the Ready condition can carry (and the reason of its Warning Event)."""

    # Ready=True
    TOKEN_ISSUED = "TokenIssued"
    REFRESH_FAILING = "RefreshFailing"
    # Ready=False: the state of the token
    EXPIRED = "Expired"
    # the token endpoint's answer (RFC 6749 section 5.2 and HTTP)
    INVALID_CLIENT = "InvalidClient"
    UNAUTHORIZED_CLIENT = "UnauthorizedClient"
    UNSUPPORTED_GRANT_TYPE = "UnsupportedGrantType"
    INVALID_SCOPE = "InvalidScope"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_GRANT = "InvalidGrant"
    FORBIDDEN = "Forbidden"
    NOT_FOUND = "NotFound"
    REQUEST_REJECTED = "RequestRejected"
    SERVER_ERROR = "ServerError"
    TEMPORARILY_UNAVAILABLE = "TemporarilyUnavailable"
    RATE_LIMITED = "RateLimited"
    TOO_EARLY = "TooEarly"
    TIMEOUT = "Timeout"
    CONNECTION_FAILED = "ConnectionFailed"
    BAD_RESPONSE = "BadResponse"
    REDIRECT_REFUSED = "RedirectRefused"
    # where the request goes
    TOKEN_URL_REFUSED = "TokenURLRefused"
    PRIVATE_NETWORK_REFUSED = "PrivateNetworkRefused"
    PROXY_REFUSED = "ProxyRefused"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    CA_BUNDLE_NOT_FOUND = "CABundleNotFound"
    CA_BUNDLE_INVALID = "CABundleInvalid"
    ISSUER_MISMATCH = "IssuerMismatch"
    DISCOVERY_INVALID = "DiscoveryInvalid"
    DISCOVERY_FAILED = "DiscoveryFailed"
    NO_SUPPORTED_AUTH_METHOD = "NoSupportedAuthMethod"
    # what the request carries
    INVALID_PARAMETERS = "InvalidParameters"
    CREDENTIALS_MISSING = "CredentialsMissing"
    CLIENT_SECRET_NOT_FOUND = "ClientSecretNotFound"
    CLIENT_SECRET_KEY_MISSING = "ClientSecretKeyMissing"
    CLIENT_SECRET_NOT_OPTED_IN = "ClientSecretNotOptedIn"
    CLIENT_SECRET_TOO_SHORT = "ClientSecretTooShort"
    PRIVATE_KEY_NOT_FOUND = "PrivateKeyNotFound"
    PRIVATE_KEY_MISSING = "PrivateKeyMissing"
    INVALID_PRIVATE_KEY = "InvalidPrivateKey"
    INVALID_CERTIFICATE = "InvalidCertificate"
    CLIENT_CERTIFICATE_NOT_FOUND = "ClientCertificateNotFound"
    CLIENT_CERTIFICATE_MISSING = "ClientCertificateMissing"
    CLIENT_CERTIFICATE_INVALID = "ClientCertificateInvalid"
    CLIENT_CERTIFICATE_REJECTED = "ClientCertificateRejected"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    SERVICE_ACCOUNT_NOT_OPTED_IN = "ServiceAccountNotOptedIn"
    SERVICE_ACCOUNT_TOKEN_FORBIDDEN = "ServiceAccountTokenForbidden"
    DESTINATION_NOT_ALLOWED = "DestinationNotAllowed"
    REQUEST_HEADER_SECRET_NOT_FOUND = "RequestHeaderSecretNotFound"
    REQUEST_HEADER_VALUE_INVALID = "RequestHeaderValueInvalid"
    # the cluster
    TARGET_CONFLICT = "TargetConflict"
    TARGET_NOT_HANDED_OVER = "TargetNotHandedOver"
    TARGET_NOT_FOUND = "TargetNotFound"
    TARGET_TYPE_MISMATCH = "TargetTypeMismatch"
    TARGET_INVALID = "TargetInvalid"
    TARGET_WRITE_FAILED = "TargetWriteFailed"
    KUBERNETES_API_ERROR = "KubernetesAPIError"
    # the spec
    TEMPLATE_FAILED = "TemplateFailed"
    INVALID_SPEC = "InvalidSpec"


R = Reason
#: What each reason means and what to do, in the order README's table lists them.
EXPLAINED: tuple[tuple[tuple[Reason, ...], str], ...] = (
    ((R.TOKEN_ISSUED,), "the target Secret holds a valid token"),
    (
        (R.REFRESH_FAILING,),
        "(Ready=True) the last refresh failed transiently; the current token is still valid; "
        "see the message",
    ),
    (
        (R.EXPIRED,),
        "refreshes kept failing and the last token has expired; check the token endpoint",
    ),
    (
        (R.INVALID_CLIENT,),
        "the server refused the client id/secret (401 / `invalid_client`), and every key of "
        "`fallbackClientSecretKeys` too; fix the client Secret",
    ),
    (
        (R.UNAUTHORIZED_CLIENT, R.UNSUPPORTED_GRANT_TYPE),
        "the client may not use the client credentials grant; fix it at the provider",
    ),
    (
        (R.INVALID_SCOPE, R.INVALID_REQUEST, R.INVALID_GRANT),
        "the provider refused the request's scopes or parameters",
    ),
    (
        (R.FORBIDDEN, R.NOT_FOUND, R.REQUEST_REJECTED),
        "the token endpoint answered 403, 404 or another 4xx without a usable OAuth error code; "
        "check the URL and the client's permissions at the provider",
    ),
    (
        (
            R.SERVER_ERROR,
            R.TEMPORARILY_UNAVAILABLE,
            R.RATE_LIMITED,
            R.TOO_EARLY,
            R.TIMEOUT,
            R.CONNECTION_FAILED,
            R.BAD_RESPONSE,
        ),
        "transient trouble at the token endpoint; retried with backoff (and never sooner than "
        "its `Retry-After`)",
    ),
    (
        (R.TOKEN_URL_REFUSED,),
        "the URL is not allowed: http without `--allow-insecure-http`, a link-local or cloud "
        "metadata address, or a host outside `--allowed-token-host`",
    ),
    (
        (R.PRIVATE_NETWORK_REFUSED,),
        "the token URL or issuer is, names or resolves to a loopback, private or "
        "cluster-internal address (`127.0.0.1`, `10.x`, `localhost`, `*.svc`, the API "
        "server); nothing was sent. Only the operator's admin can allow such destinations "
        "(`--allow-private-network`, Helm `allowedPrivateNetworks`)",
    ),
    (
        (R.PROXY_REFUSED,),
        "the egress proxy (`HTTPS_PROXY` in the operator's environment) refused the tunnel to "
        "the token endpoint or issuer: 407 wants proxy credentials, 403 is the proxy's own "
        "rules; nothing reached the endpoint. Retried with backoff. A proxy that cannot be "
        "reached at all is `ConnectionFailed`, naming the proxy",
    ),
    ((R.REDIRECT_REFUSED,), "the token endpoint answered with a redirect; use the final URL"),
    (
        (R.TLS_VERIFICATION_FAILED,),
        "the endpoint's certificate is not trusted; for a private CA set `spec.caBundleRef`",
    ),
    (
        (R.CA_BUNDLE_NOT_FOUND, R.CA_BUNDLE_INVALID),
        "the ConfigMap/Secret named by `caBundleRef` or its key is missing, or holds no PEM "
        "certificate",
    ),
    (
        (R.INVALID_PARAMETERS,),
        "`extraParams` sets a parameter tokensync sets itself (only possible for objects stored "
        "before a schema change)",
    ),
    (
        (R.CLIENT_SECRET_NOT_FOUND, R.CLIENT_SECRET_KEY_MISSING),
        "the referenced Secret or key does not exist",
    ),
    (
        (R.CLIENT_SECRET_NOT_OPTED_IN,),
        "a Secret holding credentials (client secret, private key, client certificate) or a "
        'request header\'s value lacks the label `tokensync.dev/client-secret: "true"`',
    ),
    (
        (R.CREDENTIALS_MISSING,),
        "the authentication method needs a client secret, private key, client certificate or "
        "ServiceAccount token that the spec does not provide",
    ),
    (
        (
            R.PRIVATE_KEY_NOT_FOUND,
            R.PRIVATE_KEY_MISSING,
            R.INVALID_PRIVATE_KEY,
            R.INVALID_CERTIFICATE,
        ),
        "the `privateKeyRef` Secret or key is missing, is not a usable private key (RSA under "
        "2048 bits, encrypted PEM, a public key, an algorithm that does not fit it), or the "
        "certificate does not belong to the key",
    ),
    (
        (R.CLIENT_SECRET_TOO_SHORT,),
        "`client_secret_jwt`: the secret is shorter than the HMAC hash (32 bytes for HS256)",
    ),
    (
        (R.REQUEST_HEADER_SECRET_NOT_FOUND, R.REQUEST_HEADER_VALUE_INVALID),
        "a `requestHeaders` Secret is missing, or its key is missing, empty, longer than 8192 "
        "characters or not one line of visible ASCII",
    ),
    (
        (
            R.CLIENT_CERTIFICATE_NOT_FOUND,
            R.CLIENT_CERTIFICATE_MISSING,
            R.CLIENT_CERTIFICATE_INVALID,
        ),
        "the `clientCertificateRef` Secret, its `tls.crt`/`tls.key`, or a matching pair is missing",
    ),
    (
        (R.CLIENT_CERTIFICATE_REJECTED,),
        "the token endpoint refused the client certificate in the TLS handshake (unknown CA, "
        "expired, ...)",
    ),
    (
        (R.SERVICE_ACCOUNT_NOT_FOUND, R.SERVICE_ACCOUNT_NOT_OPTED_IN),
        "the `serviceAccountRef` ServiceAccount is missing, or its annotation "
        "`tokensync.dev/token-audiences` does not list the audience",
    ),
    (
        (R.DESTINATION_NOT_ALLOWED,),
        "a Secret or ServiceAccount holding the client's proof does not list the token URL "
        "(or the issuer) in its annotation `tokensync.dev/allowed-destinations`; nothing was "
        "sent. Its owner adds the destination to the annotation",
    ),
    (
        (R.SERVICE_ACCOUNT_TOKEN_FORBIDDEN,),
        "workload identity is not granted to the operator (off by default): set the Helm "
        "value `workloadIdentity.enabled=true` or add the kustomize component "
        "`deploy/components/workload-identity` ([install.md](docs/install.md#workload-identity))",
    ),
    (
        (R.ISSUER_MISMATCH, R.DISCOVERY_INVALID, R.DISCOVERY_FAILED),
        "the issuer's metadata names another issuer, has no `token_endpoint`, or cannot be read",
    ),
    (
        (R.NO_SUPPORTED_AUTH_METHOD,),
        "with `auto`, none of the configured methods is in the issuer's "
        "`token_endpoint_auth_methods_supported`",
    ),
    (
        (R.TARGET_CONFLICT,),
        "a Secret of the target name exists and tokensync does not manage it for this "
        "credential (or, with creationPolicy Adopt, another controller owns it); the message "
        "says which",
    ),
    (
        (R.TARGET_NOT_HANDED_OVER,),
        "creationPolicy Adopt or Merge: the Secret exists without the annotation "
        "`tokensync.dev/hand-over-to` naming this ClientCredential; retried every 5 minutes "
        "and at once on `kubectl tokensync refresh`",
    ),
    (
        (R.TARGET_NOT_FOUND,),
        "creationPolicy Merge: the Secret to write into does not exist (tokensync never "
        "creates it); retried every 5 minutes and at once on `kubectl tokensync refresh`",
    ),
    (
        (R.TARGET_TYPE_MISMATCH,),
        "the Secret has another type than `spec.target.type`; a type cannot change and "
        "tokensync deletes no Secret: delete it and tokensync creates it with the new type "
        "(a Merge target: its owner recreates it); the message names both types",
    ),
    (
        (R.TARGET_INVALID,),
        "the API server refused the target Secret as invalid (422), for example "
        "`spec.target` annotations over 256 KiB or a token over the 1 MiB a Secret may hold; "
        "retried every 5 minutes and at once when the spec changes, not at every backoff",
    ),
    (
        (R.TARGET_WRITE_FAILED, R.KUBERNETES_API_ERROR),
        "the Kubernetes API refused or did not answer a read or the target Secret's write; "
        "retried with backoff (the message has the HTTP status)",
    ),
    (
        (R.TEMPLATE_FAILED,),
        "a `spec.target.template` does not parse or does not render (an undefined variable, "
        "a filter that fails, over 256 KiB); the message names the key. The Secret in place "
        "is left as it was; nothing is retried until the spec changes. Check a template "
        "with `tokensync fetch --render`",
    ),
    (
        (R.INVALID_SPEC,),
        "the spec is invalid (only possible for objects stored before a schema change)",
    ),
)
del R


class Failure(Exception):
    """One step of an attempt failed. ``message`` is safe to show anywhere: it never holds a
    secret, a token or a response body."""

    def __init__(
        self,
        reason: Reason | str,
        message: str,
        *,
        kind: Kind,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = Reason(reason)  # an unknown reason is a bug: it would not be documented
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


class TokenError(Failure):
    """A token request (or the discovery before it) that failed.

    ``permanent`` says whether retrying can help. ``error_code`` is the server's RFC 6749
    ``error`` when it is a short plain token, ``"other"`` when it is not, None when there
    was none. The server's ``error_description`` is never kept: it may echo anything,
    including the credentials.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | str,
        permanent: bool,
        status_code: int | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        kind = Kind.PERMANENT if permanent else Kind.TRANSIENT
        super().__init__(reason, message, kind=kind, retry_after=retry_after)
        self.status_code = status_code
        self.error_code = error_code

    @property
    def permanent(self) -> bool:
        return self.kind is not Kind.TRANSIENT


class ApiError(Exception):
    """A Kubernetes API request failed; ``status`` is the HTTP status (0 when none came)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {reason}")
        self.status = status
        self.reason = reason


def from_api_error(exc: ApiError, *, reason: Reason = Reason.KUBERNETES_API_ERROR) -> Failure:
    """A Kubernetes API error as a transient failure (the message holds no body)."""
    return Failure(reason, str(exc), kind=Kind.TRANSIENT)
