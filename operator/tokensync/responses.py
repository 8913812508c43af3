"""What a token endpoint's answer means: a complete :class:`Token`, or a classified failure.

Kept apart from the HTTP client (``oauth``) so that the RFC 6749 rules can be tested as
tables over plain bytes, status codes and headers, without a network or an event loop, and
so that the secrecy rule lives next to the parsing it constrains: no token, response body
or ``error_description`` ever reaches an error text. The error taxonomy (which codes and
statuses are permanent, which reason each maps to) is the contract behind the Ready
condition's reasons, listed in ``failures.Reason``.

Pure: no I/O, and no kopf, kubernetes or httpx imports.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tokensync import failures, mapping, model, timing

#: Token responses are a few hundred bytes; anything near this is broken or hostile.
MAX_BODY_BYTES = 1024 * 1024
#: token_type and the granted scope go into the credential's status, which every listing
#: of ClientCredentials carries: a server of the tenant's choosing must not make them
#: megabytes (issue 14 section 3). A spec may request 64 scopes of 256 characters; twice
#: that leaves room for the defaults a server grants besides.
MAX_TOKEN_TYPE_LENGTH = 64
MAX_SCOPE_LENGTH = 32 * 1024
#: A lifetime beyond this is a unit bug (milliseconds sent as seconds) rather than a real token.
MAX_LIFETIME = timedelta(days=3650)

LifetimeSource = Literal["expires_in", "expires_at", "jwt_exp", "default"]

R = failures.Reason
# RFC 6749 section 5.2 codes that retrying cannot fix, with the condition reason each maps to.
_PERMANENT_CODES = {
    "invalid_client": R.INVALID_CLIENT,
    "unauthorized_client": R.UNAUTHORIZED_CLIENT,
    "unsupported_grant_type": R.UNSUPPORTED_GRANT_TYPE,
    "invalid_scope": R.INVALID_SCOPE,
    "invalid_request": R.INVALID_REQUEST,
    "invalid_grant": R.INVALID_GRANT,
}
# Codes some servers send for outages; retrying is exactly what they ask for.
_TRANSIENT_CODES = {
    "server_error": R.SERVER_ERROR,
    "temporarily_unavailable": R.TEMPORARILY_UNAVAILABLE,
    "slow_down": R.RATE_LIMITED,
}
# 4xx statuses without a usable error code that still deserve a specific reason.
_STATUS_REASONS = {
    400: R.INVALID_REQUEST,
    401: R.INVALID_CLIENT,
    403: R.FORBIDDEN,
    404: R.NOT_FOUND,
}
del R
# The error code ends up in conditions, events and metric labels: only a short plain token.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NUMERIC = re.compile(r"\d+(?:\.\d+)?")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")


@dataclass(frozen=True, slots=True)
class Token:
    """A complete, parsed access token; ``issued_at`` is when the request was sent."""

    access_token: str = field(repr=False)
    token_type: str
    issued_at: datetime
    expires_at: datetime
    scope: str | None = None
    lifetime_source: LifetimeSource = "expires_in"
    #: RFC 6749 section 5.1's refresh_token, when the server sent one (decision 0048).
    refresh_token: str | None = field(default=None, repr=False)

    @property
    def lifetime(self) -> timedelta:
        return self.expires_at - self.issued_at


@dataclass(frozen=True, slots=True)
class FetchResult:
    token: Token
    #: The method that produced the token; with ``auto`` this is what the server accepted.
    auth_method: model.AuthMethod
    #: The client Secret's key whose secret the server accepted (None: the method sent no
    #: client secret), and the keys it refused before, in order (decision 0045).
    client_secret_key: str | None = None
    refused_keys: tuple[str, ...] = ()


def bad_response(message: str, *, status_code: int) -> failures.TokenError:
    """A transient ``BadResponse``: the server answered, but not with a usable token."""
    return failures.TokenError(
        f"unusable token response (HTTP {status_code}): {message}",
        reason=failures.Reason.BAD_RESPONSE,
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
    reason: failures.Reason
    if 300 <= status_code < 400:
        reason, permanent = failures.Reason.REDIRECT_REFUSED, True
    elif status_code == 429 or code == "slow_down":
        reason, permanent = failures.Reason.RATE_LIMITED, False
    elif status_code >= 500:
        reason, permanent = failures.Reason.SERVER_ERROR, False
    elif status_code in (408, 425):
        reason = failures.Reason.TIMEOUT if status_code == 408 else failures.Reason.TOO_EARLY
        permanent = False
    elif code in _TRANSIENT_CODES:
        reason, permanent = _TRANSIENT_CODES[code], False
    elif code in _PERMANENT_CODES:
        reason, permanent = _PERMANENT_CODES[code], True
    elif code is None and status_code in _STATUS_REASONS:
        reason, permanent = _STATUS_REASONS[status_code], True
    elif 400 <= status_code < 500 or code is not None:
        reason, permanent = failures.Reason.REQUEST_REJECTED, True
    else:
        # 1xx or nonsense statuses: the server is confused, not our request.
        reason, permanent = failures.Reason.BAD_RESPONSE, False
    kind = "permanent" if permanent else "transient"
    return failures.TokenError(
        f"token request failed ({what}; {kind})",
        reason=reason,
        permanent=permanent,
        status_code=status_code,
        error_code=code,
        retry_after=retry_after if not permanent else None,
    )


def _expires_in(value: object, *, status_code: int, name: str = "expires_in") -> timedelta | None:
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None:
        raise bad_response(f"{name} is not a number", status_code=status_code)
    # RFC 6749 counts whole seconds; less than one is a token already expired when it lands
    # (and a lifetime that rounds to zero microseconds would refresh in a loop).
    if not (math.isfinite(seconds) and 1 <= seconds <= MAX_LIFETIME.total_seconds()):
        raise bad_response(f"{name} is out of range", status_code=status_code)
    return timedelta(seconds=seconds)


def _seconds(value: object) -> float | None:
    """A JSON number or a string of digits as seconds; inf for one too large for a float."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
            return float(value.strip())
    # An integer of hundreds of digits is valid JSON.
    except OverflowError:
        return math.inf
    return None


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


def _lifetime(
    given: tuple[timedelta, LifetimeSource] | None,
    access_token: str,
    *,
    status_code: int,
    sent_at: datetime,
    default_lifetime: timedelta,
) -> tuple[timedelta, LifetimeSource]:
    """The earlier of the lifetime the response gave and the JWT's ``exp``, else
    ``default_lifetime``.

    A resource server checks ``exp``, whatever ``expires_in`` said: a token is never kept
    past its own ``exp``, and one whose ``exp`` has passed is no token (decision 0031). An
    ``exp`` beyond :data:`MAX_LIFETIME` is a unit bug (milliseconds) and is ignored.
    """
    lifetime: timedelta | None = None
    source: LifetimeSource = "default"
    if given is not None:
        lifetime, source = given
    exp = _jwt_exp(access_token)
    if exp is not None and exp - sent_at > MAX_LIFETIME:
        exp = None
    if exp is not None and exp <= sent_at:
        raise bad_response(
            "the token's JWT exp is not after the request time (clock skew?)",
            status_code=status_code,
        )
    if exp is not None and (lifetime is None or exp - sent_at < lifetime):
        return exp - sent_at, "jwt_exp"
    if lifetime is not None:
        return lifetime, source
    return default_lifetime, "default"


def _standard_fields(
    document: Mapping[str, Any], *, status_code: int
) -> tuple[str, str, str | None]:
    """RFC 6749 section 5.1: access_token and token_type required, scope optional."""
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise bad_response("access_token is missing or empty", status_code=status_code)
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        raise bad_response("token_type is missing or empty", status_code=status_code)
    scope = document.get("scope")
    _check_sizes(token_type, scope, status_code=status_code)
    return access_token, token_type, scope if isinstance(scope, str) else None


def _check_sizes(
    token_type: str,
    scope: object,
    *,
    status_code: int,
    names: tuple[str, str] = ("token_type", "scope"),
) -> None:
    """token_type and scope go into status: bounded, whoever chose them (``names``: how
    the messages name them)."""
    if len(token_type) > MAX_TOKEN_TYPE_LENGTH:
        raise bad_response(
            f"{names[0]} is longer than {MAX_TOKEN_TYPE_LENGTH} characters",
            status_code=status_code,
        )
    if isinstance(scope, str) and len(scope) > MAX_SCOPE_LENGTH:
        raise bad_response(
            f"{names[1]} is longer than {MAX_SCOPE_LENGTH} characters",
            status_code=status_code,
        )


# spec.responseMapping (decision 0046). Messages name the field and its path, which the
# parser checked to be short printable ASCII, and never a value found: that is the body.
_SPEC_NAMES = {attribute: key for key, attribute in model.RESPONSE_MAPPING_FIELDS.items()}


def _mapped_fields(
    document: Mapping[str, Any],
    paths: model.ResponseMapping,
    *,
    status_code: int,
    sent_at: datetime,
) -> tuple[str, str, str | None, tuple[timedelta, LifetimeSource] | None]:
    """The access token, token type, scope and lifetime, each where ``paths`` says.

    A path that is set must find a value of its type; one that is not set falls back to
    the RFC 6749 member, required for access_token only (token_type defaults to Bearer:
    the servers that need a mapping seldom send one).
    """

    def found(attribute: str) -> tuple[object, str]:
        """The value (None: absent) and how messages name it: the field and its path."""
        path = getattr(paths, attribute)
        if path is None:
            return document.get(attribute), attribute
        what = f"responseMapping.{_SPEC_NAMES[attribute]} ({path})"
        try:
            value = mapping.find(path, document)
        except mapping.BadExpression:
            raise bad_response(f"{what} is not a valid path", status_code=status_code) from None
        if value is None:
            raise bad_response(f"{what} found nothing", status_code=status_code)
        return value, what

    def wrong(what: str, expected: str) -> failures.TokenError:
        return bad_response(f"{what} is not {expected}", status_code=status_code)

    access_token, what = found("access_token")
    if access_token is None:
        raise bad_response(f"{what} is missing", status_code=status_code)
    if not isinstance(access_token, str) or not access_token:
        raise wrong(what, "a non-empty string")
    token_type, type_what = found("token_type")
    if token_type is None:
        token_type = "Bearer"
    if not isinstance(token_type, str) or not token_type:
        raise wrong(type_what, "a non-empty string")
    scope, scope_what = found("scope")
    if isinstance(scope, list) and all(isinstance(item, str) for item in scope):
        # Some servers list the granted scopes; status keeps RFC 6749's one string.
        scope = " ".join(scope)
    if scope is not None and not isinstance(scope, str):
        if paths.scope is not None:
            raise wrong(scope_what, "a string or a list of strings")
        scope = None
    _check_sizes(token_type, scope, status_code=status_code, names=(type_what, scope_what))
    given: tuple[timedelta, LifetimeSource] | None = None
    if paths.expires_at is not None:
        value, what = found("expires_at")
        given = _until(value, what=what, status_code=status_code, sent_at=sent_at), "expires_at"
    else:
        value, what = found("expires_in")
        lifetime = _expires_in(value, status_code=status_code, name=what)
        given = None if lifetime is None else (lifetime, "expires_in")
    return access_token, token_type, scope, given


def _until(value: object, *, what: str, status_code: int, sent_at: datetime) -> timedelta:
    """An absolute expiry (seconds since the epoch, or RFC 3339) as a lifetime from sent_at."""
    seconds = _seconds(value)
    if seconds is None and isinstance(value, str):
        moment = _rfc3339(value)
        if moment is None:
            raise bad_response(
                f"{what} is neither seconds since the epoch nor an RFC 3339 time with an offset",
                status_code=status_code,
            )
        seconds = moment.timestamp()
    if seconds is None:
        raise bad_response(
            f"{what} is neither seconds since the epoch nor an RFC 3339 time",
            status_code=status_code,
        )
    if not math.isfinite(seconds):
        raise bad_response(f"{what} is out of range", status_code=status_code)
    lifetime = seconds - sent_at.timestamp()
    if lifetime < 1:
        raise bad_response(
            f"{what} is not after the request time (clock skew?)", status_code=status_code
        )
    if lifetime > MAX_LIFETIME.total_seconds():
        # Milliseconds since the epoch land here, some ten thousand years ahead.
        raise bad_response(
            f"{what} is out of range (more than {MAX_LIFETIME.days} days ahead; milliseconds?)",
            status_code=status_code,
        )
    return timedelta(seconds=lifetime)


def _rfc3339(value: str) -> datetime | None:
    """An RFC 3339 time; one without Z or an offset is refused: a local time would be read
    in the server's zone, which nobody here knows."""
    text = value.strip().upper()
    if not _OFFSET.search(text):
        return None
    try:
        return datetime.fromisoformat(
            text.removesuffix("Z") + ("+00:00" if text.endswith("Z") else "")
        )
    except ValueError:
        return None


def parse_token_response(
    *,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    sent_at: datetime,
    default_lifetime: timedelta,
    mapping: model.ResponseMapping | None = None,
) -> Token:
    """Turn a token endpoint response into a :class:`Token` or raise :class:`failures.TokenError`.

    The Content-Type is not trusted (JSON served as text/plain is common), caching headers
    are ignored, and the lifetime is the earlier of ``expires_in`` and the JWT ``exp`` of the
    access token, else ``default_lifetime``, always counted from ``sent_at``. Header names
    are matched case-insensitively, so a plain dict will do. With a ``mapping``
    (spec.responseMapping), a 2xx body's fields are found where it says (``mapped``).
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
        raise bad_response("body exceeds 1 MiB", status_code=status_code)
    if not isinstance(payload, dict):
        raise bad_response("body is not a JSON object", status_code=status_code)
    if mapping is not None:
        access_token, token_type, scope, given = _mapped_fields(
            document, mapping, status_code=status_code, sent_at=sent_at
        )
    else:
        access_token, token_type, scope = _standard_fields(document, status_code=status_code)
        expires_in = _expires_in(document.get("expires_in"), status_code=status_code)
        given = None if expires_in is None else (expires_in, "expires_in")
    lifetime, source = _lifetime(
        given,
        access_token,
        status_code=status_code,
        sent_at=sent_at,
        default_lifetime=default_lifetime,
    )
    return Token(
        access_token=access_token,
        token_type=token_type,
        issued_at=sent_at,
        expires_at=sent_at + lifetime,
        scope=scope,
        lifetime_source=source,
        refresh_token=_refresh_token(document),
    )


def _refresh_token(document: Mapping[str, Any]) -> str | None:
    """The top-level refresh_token member, also under a responseMapping (decision 0048);
    anything but a non-empty string is no refresh token rather than a bad response: the
    access token is good either way."""
    value = document.get("refresh_token")
    return value if isinstance(value, str) and value else None
