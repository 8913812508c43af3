"""The OAuth 2.0 client credentials client: request building, response parsing, error taxonomy.

Everything the operator knows about talking to a token endpoint lives here, so that the
network-safety rules (no redirects, capped bodies, refused URLs) and the secrecy rules (no
secret, token or response body in any error text) are enforced in one place, and so that the
reconcile loop only sees two outcomes: a complete :class:`Token`, or a :class:`failures.TokenError`
that says whether retrying can help.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import re
import secrets
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from tokensync import assertion, failures, model, timing

#: Token responses are a few hundred bytes; anything near this is broken or hostile.
MAX_BODY_BYTES = 1024 * 1024
#: A lifetime beyond this is a unit bug (milliseconds sent as seconds) rather than a real token.
MAX_LIFETIME = timedelta(days=3650)

LifetimeSource = Literal["expires_in", "jwt_exp", "default"]

# RFC 6749 section 5.2 codes that retrying cannot fix, with the condition reason each maps to.
_PERMANENT_CODES = {
    "invalid_client": "InvalidClient",
    "unauthorized_client": "UnauthorizedClient",
    "unsupported_grant_type": "UnsupportedGrantType",
    "invalid_scope": "InvalidScope",
    "invalid_request": "InvalidRequest",
    "invalid_grant": "InvalidGrant",
}
# Codes some servers send for outages; retrying is exactly what they ask for.
_TRANSIENT_CODES = {
    "server_error": "ServerError",
    "temporarily_unavailable": "TemporarilyUnavailable",
    "slow_down": "RateLimited",
}
# 4xx statuses without a usable error code that still deserve a specific reason.
_STATUS_REASONS = {400: "InvalidRequest", 401: "InvalidClient", 403: "Forbidden", 404: "NotFound"}
# The error code ends up in conditions, events and metric labels: only a short plain token.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What a resolver should see after IDNA encoding; IPv6 literals are told apart by their colon.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_NUMERIC = re.compile(r"\d+(?:\.\d+)?")
# Parameters the client sets itself; letting extraParams set them would hide the typed fields
# or, for the credentials, smuggle a second client identity into the request.
_RESERVED_PARAMS = frozenset(model.RESERVED_EXTRA_PARAMS)
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


@dataclass(frozen=True, slots=True)
class Token:
    """A complete, parsed access token; ``issued_at`` is when the request was sent."""

    access_token: str = field(repr=False)
    token_type: str
    issued_at: datetime
    expires_at: datetime
    scope: str | None = None
    lifetime_source: LifetimeSource = "expires_in"

    @property
    def lifetime(self) -> timedelta:
        return self.expires_at - self.issued_at


@dataclass(frozen=True, slots=True)
class FetchResult:
    token: Token
    #: The method that produced the token; with ``auto`` this is what the server accepted.
    auth_method: model.AuthMethod


def _bad_response(message: str, *, status_code: int) -> failures.TokenError:
    return failures.TokenError(
        f"unusable token response (HTTP {status_code}): {message}",
        reason="BadResponse",
        permanent=False,
        status_code=status_code,
    )


def _decode_json(data: bytes) -> object:
    try:
        return json.loads(data)
    # RecursionError: a megabyte of "[" is valid input to a hostile server.
    except (ValueError, RecursionError):
        return None


def _safe_code(value: object) -> str:
    return value if isinstance(value, str) and _SAFE_CODE.fullmatch(value) else "other"


def _error_from_response(
    *, status_code: int, code: str | None, retry_after: float | None
) -> failures.TokenError:
    """Classify a non-2xx response, or a 2xx that carries an ``error`` member."""
    what = f"HTTP {status_code}" + (f" error={code}" if code else "")
    if 300 <= status_code < 400:
        reason, permanent = "RedirectRefused", True
    elif status_code == 429 or code == "slow_down":
        reason, permanent = "RateLimited", False
    elif status_code >= 500:
        reason, permanent = "ServerError", False
    elif status_code in (408, 425):
        reason, permanent = "Timeout" if status_code == 408 else "TooEarly", False
    elif code in _TRANSIENT_CODES:
        reason, permanent = _TRANSIENT_CODES[code], False
    elif code in _PERMANENT_CODES:
        reason, permanent = _PERMANENT_CODES[code], True
    elif code is None and status_code in _STATUS_REASONS:
        reason, permanent = _STATUS_REASONS[status_code], True
    elif 400 <= status_code < 500 or code is not None:
        reason, permanent = "RequestRejected", True
    else:
        # 1xx or nonsense statuses: the server is confused, not our request.
        reason, permanent = "BadResponse", False
    kind = "permanent" if permanent else "transient"
    return failures.TokenError(
        f"token request failed ({what}; {kind})",
        reason=reason,
        permanent=permanent,
        status_code=status_code,
        error_code=code,
        retry_after=retry_after if not permanent else None,
    )


def _expires_in(value: object, *, status_code: int) -> timedelta | None:
    if value is None:
        return None
    seconds: float
    if isinstance(value, bool):
        raise _bad_response("expires_in is not a number", status_code=status_code)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        seconds = float(value.strip())
    else:
        raise _bad_response("expires_in is not a number", status_code=status_code)
    # RFC 6749 counts whole seconds; less than one is a token already expired when it lands
    # (and a lifetime that rounds to zero microseconds would refresh in a loop).
    if not (math.isfinite(seconds) and 1 <= seconds <= MAX_LIFETIME.total_seconds()):
        raise _bad_response("expires_in is out of range", status_code=status_code)
    return timedelta(seconds=seconds)


def _jwt_exp(access_token: str) -> datetime | None:
    """Read ``exp`` from a JWT without verifying it: only to learn the lifetime, never to trust."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1]
    try:
        payload = _decode_json(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_token_response(
    *,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    sent_at: datetime,
    default_lifetime: timedelta,
) -> Token:
    """Turn a token endpoint response into a :class:`Token` or raise :class:`failures.TokenError`.

    The Content-Type is not trusted (JSON served as text/plain is common), caching headers
    are ignored, and the lifetime comes from ``expires_in``, else the JWT ``exp`` of the
    access token, else ``default_lifetime``, always counted from ``sent_at``. Header names
    are matched case-insensitively, so a plain dict will do.
    """
    if sent_at.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware")
    payload = _decode_json(body) if len(body) <= MAX_BODY_BYTES else None
    document: dict[str, Any] = payload if isinstance(payload, dict) else {}
    raw_code = document.get("error")
    code = None if raw_code is None else _safe_code(raw_code)
    if not 200 <= status_code < 300 or code is not None:
        retry_after = None
        if status_code == 429 or status_code >= 500:
            # sent_at rather than the arrival time: at worst we wait a round trip longer.
            value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
            retry_after = timing.retry_after_seconds(value, now=sent_at)
        raise _error_from_response(status_code=status_code, code=code, retry_after=retry_after)

    if len(body) > MAX_BODY_BYTES:
        raise _bad_response("body exceeds 1 MiB", status_code=status_code)
    if not isinstance(payload, dict):
        raise _bad_response("body is not a JSON object", status_code=status_code)
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise _bad_response("access_token is missing or empty", status_code=status_code)
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        raise _bad_response("token_type is missing or empty", status_code=status_code)
    scope = document.get("scope")

    source: LifetimeSource = "expires_in"
    lifetime = _expires_in(document.get("expires_in"), status_code=status_code)
    if lifetime is None:
        exp = _jwt_exp(access_token)
        if exp is not None and exp - sent_at <= MAX_LIFETIME:
            if exp <= sent_at:
                raise _bad_response(
                    "the token's JWT exp is not after the request time (clock skew?)",
                    status_code=status_code,
                )
            lifetime, source = exp - sent_at, "jwt_exp"
        else:
            lifetime, source = default_lifetime, "default"
    return Token(
        access_token=access_token,
        token_type=token_type,
        issued_at=sent_at,
        expires_at=sent_at + lifetime,
        scope=scope if isinstance(scope, str) else None,
        lifetime_source=source,
    )


def _form_encode(value: str) -> str:
    # RFC 6749 section 2.3.1 wants the form encoding applied before Basic. quote() with no
    # safe characters differs from quote_plus() only in writing a space as %20, which every
    # decoder reads back as a space, whereas "+" is read back as "+" by servers that merely
    # percent-decode (Authlib among them).
    return urllib.parse.quote(value, safe="")


def _params(request: model.TokenRequest) -> list[tuple[str, str]]:
    params = [("grant_type", "client_credentials")]
    if request.scopes:
        params.append(("scope", " ".join(request.scopes)))
    if request.audience:
        params.append(("audience", request.audience))
    params.extend(("resource", r) for r in request.resources)
    for key, value in request.extra_params:
        if key in _RESERVED_PARAMS:
            raise failures.TokenError(
                f"extraParams may not set {key!r}: use the dedicated spec field",
                reason="InvalidParameters",
                permanent=True,
            )
        params.append((key, value))
    return params


def _assertion_key(
    method: model.AuthMethod, request: model.TokenRequest, credentials: model.ClientAuthMaterial
) -> assertion.SigningKey:
    options = request.assertion
    if method is model.AuthMethod.CLIENT_SECRET_JWT:
        return assertion.hmac_key(
            _required(credentials.client_secret, "client secret"),
            algorithm=options.algorithm,
            key_id=options.key_id,
        )
    return assertion.load_private_key(
        _required(credentials.private_key, "private key"),
        certificate=credentials.certificate,
        algorithm=options.algorithm,
        key_id=options.key_id,
    )


def _required(value: str | None, what: str) -> str:
    if not value:
        raise failures.TokenError(
            f"the {what} this authentication method needs is missing",
            reason="CredentialsMissing",
            permanent=True,
        )
    return value


def _client_assertion(
    method: model.AuthMethod,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    now: datetime,
) -> str:
    if method is model.AuthMethod.WORKLOAD_IDENTITY:
        return _required(credentials.external_assertion, "ServiceAccount token")
    try:
        return assertion.sign(
            _assertion_key(method, request, credentials),
            client_id=credentials.client_id,
            audience=request.assertion.audience or request.token_url,
            now=now,
            lifetime=request.assertion.lifetime,
            jti=secrets.token_urlsafe(24),
        )
    except assertion.KeyProblem as exc:
        raise failures.TokenError(str(exc), reason=exc.reason, permanent=True) from None


def _build(
    *,
    method: model.AuthMethod,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    now: datetime,
) -> tuple[dict[str, str], bytes]:
    """Headers and body for one attempt with one (concrete) authentication method."""
    # identity: a compressed body could expand far past the cap inside a single chunk.
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    params = _params(request)
    if method is model.AuthMethod.CLIENT_SECRET_JSON:
        document: dict[str, str | list[str]] = dict(params)
        if len(request.resources) > 1:
            document["resource"] = list(request.resources)
        document["client_id"] = credentials.client_id
        document["client_secret"] = _required(credentials.client_secret, "client secret")
        headers["Content-Type"] = "application/json"
        return headers, json.dumps(document).encode()
    if method is model.AuthMethod.CLIENT_SECRET_BASIC:
        secret = _required(credentials.client_secret, "client secret")
        pair = f"{_form_encode(credentials.client_id)}:{_form_encode(secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif method is model.AuthMethod.CLIENT_SECRET_POST:
        params += [("client_id", credentials.client_id)]
        params += [("client_secret", _required(credentials.client_secret, "client secret"))]
    elif method in model.ASSERTION_METHODS:
        # RFC 7521 section 4.2: client_id is optional with an assertion; Entra ID needs it
        # for federated credentials, and every server we know accepts it.
        params += [
            ("client_id", credentials.client_id),
            ("client_assertion_type", assertion.ASSERTION_TYPE),
            ("client_assertion", _client_assertion(method, request, credentials, now)),
        ]
    elif method in model.TLS_METHODS:
        # RFC 8705 section 2: the TLS client certificate is the proof; client_id says whose.
        _required(credentials.tls_certificate, "client certificate")
        params += [("client_id", credentials.client_id)]
    else:
        raise ValueError(f"not a concrete authentication method: {method}")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return headers, urllib.parse.urlencode(params).encode()


def candidate_methods(
    configured: model.AuthMethod,
    credentials: model.ClientAuthMaterial,
    supported: Collection[str] | None = None,
    *,
    algorithm: str | None = None,
) -> list[model.AuthMethod]:
    """The methods to try, in order: the configured one, or what ``auto`` may use.

    ``auto`` prefers what needs no shared secret (a ServiceAccount token, a private key, a
    client certificate), then client_secret_basic and client_secret_post. With a discovery
    document, ``supported`` (its token_endpoint_auth_methods_supported) filters the list,
    and client_secret_jwt joins it when the server lists it. An HMAC ``algorithm``
    (spec.clientAssertion.algorithm HS256/384/512) asks for client_secret_jwt instead of
    private_key_jwt.
    """
    if configured is not model.AuthMethod.AUTO:
        return [configured]
    m = model.AuthMethod
    hmac = algorithm is not None and algorithm.startswith("HS")
    candidates: list[model.AuthMethod] = []
    if credentials.external_assertion:
        candidates.append(m.WORKLOAD_IDENTITY)
    if credentials.private_key and not hmac:
        candidates.append(m.PRIVATE_KEY_JWT)
    if credentials.client_secret and hmac:
        candidates.append(m.CLIENT_SECRET_JWT)
    if credentials.tls_certificate:
        candidates += [m.TLS_CLIENT_AUTH, m.SELF_SIGNED_TLS_CLIENT_AUTH]
    if credentials.client_secret:
        candidates += [m.CLIENT_SECRET_BASIC, m.CLIENT_SECRET_POST]
        if not hmac:
            candidates.append(m.CLIENT_SECRET_JWT)
    if supported is None:
        # Without a list: the two mTLS methods look the same on the wire, and an HMAC
        # assertion is worth trying only where the server says it takes one.
        unlisted = {m.SELF_SIGNED_TLS_CLIENT_AUTH} | (set() if hmac else {m.CLIENT_SECRET_JWT})
        return [c for c in candidates if c not in unlisted]
    # A federated ServiceAccount token is a private_key_jwt assertion to the server.
    listed = [
        c
        for c in candidates
        if (m.PRIVATE_KEY_JWT.value if c is m.WORKLOAD_IDENTITY else c.value) in supported
    ]
    if m.TLS_CLIENT_AUTH in listed:
        listed = [c for c in listed if c is not m.SELF_SIGNED_TLS_CLIENT_AUTH]
    return listed


async def read_capped(response: httpx.Response) -> bytes:
    """The body, or an error once it passes the cap (checked before and while reading)."""
    status = response.status_code
    # An oversized error body is dropped rather than raised: the status still classifies it,
    # and a 503 should stay a ServerError with its Retry-After.
    overflow = b"" if not 200 <= status < 300 else None
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        if overflow is None:
            raise _bad_response("body exceeds 1 MiB", status_code=status)
        return overflow
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            if overflow is None:
                raise _bad_response("body exceeds 1 MiB", status_code=status)
            return overflow
    return bytes(body)


async def _attempt(
    client: httpx.AsyncClient,
    *,
    method: model.AuthMethod,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    default_lifetime: timedelta,
    now: Callable[[], datetime],
    seconds: float,
) -> Token:
    sent_at = now()
    headers, body = _build(method=method, request=request, credentials=credentials, now=sent_at)
    # Exception texts may carry the URL or bytes from the wire: only class names go out, and
    # "from None" keeps them out of logged tracebacks too.
    try:
        # httpx timeouts are per read; the outer deadline stops a server that drips bytes.
        async with asyncio.timeout(seconds):
            async with client.stream(
                "POST",
                request.token_url,
                content=body,
                headers=headers,
                timeout=seconds,
                follow_redirects=False,
            ) as response:
                data = await read_capped(response)
                status, response_headers = response.status_code, response.headers
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise failures.TokenError(
            f"token endpoint timed out after {seconds:g}s ({type(exc).__name__})",
            reason="Timeout",
            permanent=False,
        ) from None
    except httpx.InvalidURL:
        raise failures.TokenError(
            "tokenURL is not a valid URL", reason="TokenURLRefused", permanent=True
        ) from None
    except httpx.DecodingError:
        raise failures.TokenError(
            "token endpoint sent an undecodable body", reason="BadResponse", permanent=False
        ) from None
    except (httpx.HTTPError, ssl.SSLError) as exc:
        # ssl.SSLError too: with TLS 1.3 a server's alert about our certificate arrives on
        # the first read, and httpcore's stream lets it through unwrapped.
        if tls_verification_failed(exc):
            # Retrying cannot help: the certificate or the CA bundle must change.
            raise failures.TokenError(
                "the token endpoint's TLS certificate is not trusted "
                "(set spec.caBundleRef for a private CA)",
                reason="TLSVerificationFailed",
                permanent=True,
            ) from None
        if credentials.tls_certificate and _certificate_refused(exc):
            # The server refused our certificate in the handshake (unknown CA, expired, ...).
            raise failures.TokenError(
                "the token endpoint refused the TLS client certificate (spec.clientCertificateRef)",
                reason="ClientCertificateRejected",
                permanent=True,
            ) from None
        raise failures.TokenError(
            f"cannot reach the token endpoint ({type(exc).__name__})",
            reason="ConnectionFailed",
            permanent=False,
        ) from None
    return parse_token_response(
        status_code=status,
        headers=response_headers,
        body=data,
        sent_at=sent_at,
        default_lifetime=default_lifetime,
    )


#: TLS alerts that mean "your certificate", as OpenSSL names them in ``SSLError.reason``.
CERTIFICATE_ALERTS = (
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_REQUIRED",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_UNKNOWN",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
)


def _ssl_errors(exc: BaseException) -> Iterator[ssl.SSLError]:
    """The ssl errors in an exception's chain (httpx wraps httpcore, which wraps ssl)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        if isinstance(seen, ssl.SSLError):
            yield seen
        seen = seen.__cause__ or seen.__context__


def tls_verification_failed(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in _ssl_errors(exc))


def is_certificate_alert(reason: str | None) -> bool:
    """Is this ``SSLError.reason`` the peer refusing our certificate?"""
    upper = (reason or "").upper()
    return "ALERT" in upper and any(alert in upper for alert in CERTIFICATE_ALERTS)


def _certificate_refused(exc: BaseException) -> bool:
    return any(is_certificate_alert(e.reason) for e in _ssl_errors(exc))


def _client_auth_failed(error: failures.TokenError) -> bool:
    return error.status_code == 401 or error.error_code == "invalid_client"


async def fetch_token(
    client: httpx.AsyncClient,
    *,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    default_lifetime: timedelta,
    now: Callable[[], datetime],
    # A parameter rather than the caller's asyncio.timeout: it also sets httpx's own timeouts.
    timeout: float = 10.0,  # noqa: ASYNC109
    methods: Sequence[model.AuthMethod] | None = None,
) -> FetchResult:
    """Request a token with the client credentials grant (RFC 6749 section 4.4).

    Tries ``methods`` in order (by default :func:`candidate_methods` for
    ``request.auth_method``), moving on only when the server rejects the client
    authentication (HTTP 401 or ``invalid_client``). Callers that remember which method
    worked put it first. ``now`` must return timezone-aware datetimes. The token URL is not
    checked here: call :func:`check_token_url` first. For mTLS methods ``client`` must be
    the one holding the client certificate.
    """
    if methods is None:
        methods = candidate_methods(request.auth_method, credentials)
    if not methods:
        raise failures.TokenError(
            "no client authentication method both configured and supported by the server",
            reason="NoSupportedAuthMethod",
            permanent=True,
        )
    for position, method in enumerate(methods, start=1):
        try:
            token = await _attempt(
                client,
                method=method,
                request=request,
                credentials=credentials,
                default_lifetime=default_lifetime,
                now=now,
                seconds=timeout,
            )
        except failures.TokenError as error:
            if position < len(methods) and _client_auth_failed(error):
                continue
            raise
        return FetchResult(token=token, auth_method=method)
    raise AssertionError("unreachable: the last method either returns or raises")


def _refuse(message: str) -> failures.TokenError:
    return failures.TokenError(
        f"tokenURL refused: {message}", reason="TokenURLRefused", permanent=True
    )


def _host_allowed(host: str, allowed_hosts: frozenset[str]) -> bool:
    for entry in allowed_hosts:
        pattern = entry.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _check_address(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            # The resolver accepts legacy forms such as 2852039166 or 0xa9.0xfe.0xa9.0xfe
            # for 169.254.169.254; refusing them beats normalising them correctly.
            socket.inet_aton(host)
        except (OSError, ValueError):
            return
        raise _refuse("write IPv4 addresses as four decimal numbers") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        raise _refuse("cloud metadata addresses are not token endpoints")
    if address.is_link_local:
        raise _refuse("link-local addresses are not allowed")


def check_token_url(
    url: str, *, allow_insecure_http: bool, allowed_hosts: frozenset[str] | None = None
) -> None:
    """Refuse token URLs that would leak credentials or reach what they should not.

    Raises :class:`failures.TokenError` with reason ``TokenURLRefused``. Host names are checked as
    written: a name that resolves to a refused address is caught only by ``allowed_hosts``
    or by network policy. Allowlist entries for internationalised names are written in
    their ASCII (punycode) form.
    """
    # urlsplit quietly strips some of these, and resolvers treat others in their own ways.
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise _refuse("control characters and spaces are not allowed")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port validates it
        # httpx normalises hosts (IDNA, and "169。254。169。254" becomes a dotted quad), and
        # its result is what gets connected to, so that is the host to judge too.
        connected = httpx.URL(url).raw_host.decode("ascii")
    except (ValueError, httpx.InvalidURL):
        raise _refuse("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_insecure_http:
        raise _refuse("https is required (plain http needs the operator's explicit opt-in)")
    if scheme not in ("https", "http"):
        raise _refuse("the scheme must be https")
    if "@" in parts.netloc:
        raise _refuse("credentials in the URL are not allowed; use clientSecretRef")
    if "#" in url:
        raise _refuse("a fragment is not allowed")
    hosts = {h.lower().rstrip(".") for h in (parts.hostname or "", connected)}
    if "" in hosts:
        raise _refuse("the URL has no host")
    if ":" not in connected and not _HOST_NAME.fullmatch(connected):
        raise _refuse("the host is not a valid host name or address")
    # Both readings of the host must pass, so that no parser difference slips through.
    for host in sorted(hosts):
        if host in _METADATA_HOSTS:
            raise _refuse("cloud metadata hosts are not token endpoints")
        _check_address(host)
        if allowed_hosts is not None and not _host_allowed(host, allowed_hosts):
            raise _refuse(f"host {host!r} is not in the operator's allowlist")
