"""The OAuth 2.0 token request over HTTP: client credentials (RFC 6749 section 4.4) and
the other grants of spec.grant (``grants``, decision 0047).

This is the one place that sends a token request, so that the network-safety rules (no
redirects, capped bodies, deadlines that a dripping server cannot stretch) and the secrecy
rule (no secret, token, URL or response body in any error text, nor in a traceback) are
enforced once. What a request carries to prove the client is ``clientauth``'s; what the
answer means is ``responses``'; where a request may go is ``urlpolicy``'s (checked before
calling here). The reconcile loop sees two outcomes: a :class:`responses.FetchResult`, or
a :class:`failures.TokenError` that says whether retrying can help.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

import httpx

from tokensync import clientauth, config, failures, grants, headers, model, responses

# Parameters the client sets itself; letting extraParams set them would hide the typed fields
# or, for the credentials, smuggle a second client identity into the request.
_RESERVED_PARAMS = frozenset(model.RESERVED_EXTRA_PARAMS)


def _params(
    request: model.TokenRequest, material: model.ClientAuthMaterial, *, now: datetime
) -> list[tuple[str, str]]:
    params = grants.parameters(request, material, now=now)
    taken = _RESERVED_PARAMS | model.GRANT_PARAMS[request.grant.type]
    if request.scopes:
        params.append(("scope", " ".join(request.scopes)))
    if request.audience:
        params.append(("audience", request.audience))
    params.extend(("resource", r) for r in request.resources)
    for key, value in request.extra_params:
        if key in taken:
            raise failures.TokenError(
                f"extraParams may not set {key!r}: use the dedicated spec field",
                reason=failures.Reason.INVALID_PARAMETERS,
                permanent=True,
            )
        params.append((key, value))
    return params


def _build(
    *,
    method: model.AuthMethod,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    now: datetime,
) -> tuple[dict[str, str], bytes]:
    """Headers and body for one attempt with one (concrete) authentication method."""
    auth = clientauth.for_method(method)
    outgoing = clientauth.Outgoing(
        request=request,
        material=credentials,
        now=now,
        params=_params(request, credentials, now=now),
        headers=own_headers(request.headers),
    )
    auth.apply(outgoing)
    return outgoing.encode()


def own_headers(extra: Sequence[tuple[str, str]]) -> dict[str, str]:
    """spec.requestHeaders (decision 0044), then the headers tokensync owns, which win."""
    for name, _ in extra:
        if headers.name_problem(name) is not None:  # parse_spec refuses it: a second line
            raise failures.TokenError(
                f"requestHeaders may not set {name!r}",
                reason=failures.Reason.INVALID_PARAMETERS,
                permanent=True,
            )
    return {
        **dict(extra),
        "Accept": "application/json",
        # identity: a compressed body could expand far past the cap inside a single chunk.
        "Accept-Encoding": "identity",
    }


async def read_capped(response: httpx.Response, *, cap: int = responses.MAX_BODY_BYTES) -> bytes:
    """The body, or an error once it passes ``cap`` bytes (checked before and while reading)."""
    status = response.status_code
    # An oversized error body is dropped rather than raised: the status still classifies it,
    # and a 503 should stay a ServerError with its Retry-After.
    overflow = b"" if not 200 <= status < 300 else None
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        if overflow is None:
            raise responses.bad_response(f"body exceeds {_size(cap)}", status_code=status)
        return overflow
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            if overflow is None:
                raise responses.bad_response(f"body exceeds {_size(cap)}", status_code=status)
            return overflow
    return bytes(body)


def _size(cap: int) -> str:
    return f"{cap // 2**20} MiB" if cap % 2**20 == 0 else f"{cap // 1024} KiB"


async def _attempt(
    client: httpx.AsyncClient,
    *,
    method: model.AuthMethod,
    request: model.TokenRequest,
    credentials: model.ClientAuthMaterial,
    default_lifetime: timedelta,
    now: Callable[[], datetime],
    seconds: float,
) -> responses.Token:
    sent_at = now()
    headers, body = _build(method=method, request=request, credentials=credentials, now=sent_at)
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
    # ssl.SSLError too: with TLS 1.3 a server's alert about our certificate arrives on the
    # first read, and httpcore's stream lets it through unwrapped. "from None": exception
    # texts may carry the URL or bytes from the wire, and tracebacks get logged.
    except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, TimeoutError) as exc:
        raise _exchange_failed(
            exc, seconds=seconds, client_certificate=bool(credentials.tls_certificate)
        ) from None
    return responses.parse_token_response(
        status_code=status,
        headers=response_headers,
        body=data,
        sent_at=sent_at,
        default_lifetime=default_lifetime,
        mapping=request.response_mapping,
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


def _exchange_failed(
    exc: Exception, *, seconds: float, client_certificate: bool
) -> failures.TokenError:
    """Why no HTTP answer came; the message names only the exception's class."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return failures.TokenError(
            f"token endpoint timed out after {seconds:g}s ({type(exc).__name__})",
            reason=failures.Reason.TIMEOUT,
            permanent=False,
        )
    if isinstance(exc, httpx.InvalidURL):
        return failures.TokenError(
            "tokenURL is not a valid URL",
            reason=failures.Reason.TOKEN_URL_REFUSED,
            permanent=True,
        )
    if isinstance(exc, httpx.DecodingError):
        return failures.TokenError(
            "token endpoint sent an undecodable body",
            reason=failures.Reason.BAD_RESPONSE,
            permanent=False,
        )
    if tls_verification_failed(exc):
        # Retrying cannot help: the certificate or the CA bundle must change.
        return failures.TokenError(
            "the token endpoint's TLS certificate is not trusted "
            "(set spec.caBundleRef for a private CA)",
            reason=failures.Reason.TLS_VERIFICATION_FAILED,
            permanent=True,
        )
    if client_certificate and _certificate_refused(exc):
        # The server refused our certificate in the handshake (unknown CA, expired, ...).
        return failures.TokenError(
            "the token endpoint refused the TLS client certificate (spec.clientCertificateRef)",
            reason=failures.Reason.CLIENT_CERTIFICATE_REJECTED,
            permanent=True,
        )
    return failures.TokenError(
        f"cannot reach the token endpoint ({type(exc).__name__})",
        reason=failures.Reason.CONNECTION_FAILED,
        permanent=False,
    )


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
    timeout: float = config.DEFAULTS.request_timeout,  # noqa: ASYNC109
    methods: Sequence[model.AuthMethod] | None = None,
) -> responses.FetchResult:
    """Request a token with spec.grant's grant (client credentials by default).

    Tries ``methods`` in order (by default :func:`clientauth.candidates` for
    ``request.auth_method``), moving on only when the server rejects the client
    authentication (HTTP 401 or ``invalid_client``). Callers that remember which method
    worked put it first. When every method is refused so, the methods that send a client
    secret are tried again with each of ``credentials.fallback_secrets`` (decision 0045);
    the result names the key that worked. ``now`` must return timezone-aware datetimes.
    The token URL is not checked here: call :func:`urlpolicy.check_token_url` first. For
    mTLS methods ``client`` must be the one holding the client certificate.
    """
    if methods is None:
        methods = clientauth.candidates(
            request.auth_method,
            grants.client_material(request.grant, credentials),
            grant_proves_client=request.grant.proves_client,
        )
    if not methods:
        raise failures.TokenError(
            "no client authentication method both configured and supported by the server",
            reason=failures.Reason.NO_SUPPORTED_AUTH_METHOD,
            permanent=True,
        )
    tries = _tries(credentials, methods)
    refused: list[str] = []
    for position, (material, method) in enumerate(tries, start=1):
        sends_secret = clientauth.for_method(method).proof is clientauth.Proof.CLIENT_SECRET
        key = material.client_secret_key if sends_secret else None
        try:
            token = await _attempt(
                client,
                method=method,
                request=request,
                credentials=material,
                default_lifetime=default_lifetime,
                now=now,
                seconds=timeout,
            )
        except failures.TokenError as error:
            if position < len(tries) and _client_auth_failed(error):
                if key is not None and key not in refused:
                    refused.append(key)
                continue
            raise
        return responses.FetchResult(
            token=token,
            auth_method=method,
            client_secret_key=key,
            refused_keys=tuple(k for k in refused if k != key),
        )
    raise AssertionError("unreachable: the last try either returns or raises")


def _tries(
    credentials: model.ClientAuthMaterial, methods: Sequence[model.AuthMethod]
) -> list[tuple[model.ClientAuthMaterial, model.AuthMethod]]:
    """Each method with the client secret, then the methods that send a client secret again
    with each fallback secret (decision 0045): at most MAX_CLIENT_SECRET_KEYS rounds."""
    tries = [(credentials, method) for method in methods]
    secret_methods = [
        m for m in methods if clientauth.for_method(m).proof is clientauth.Proof.CLIENT_SECRET
    ]
    for key, secret in credentials.fallback_secrets[: model.MAX_CLIENT_SECRET_KEYS - 1]:
        fallback = dataclasses.replace(
            credentials, client_secret=secret, client_secret_key=key, fallback_secrets=()
        )
        tries.extend((fallback, method) for method in secret_methods)
    return tries
