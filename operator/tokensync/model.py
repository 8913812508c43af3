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
import re
from collections.abc import Mapping
from typing import Any

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

DEFAULT_MIN_INTERVAL = datetime.timedelta(seconds=30)
DEFAULT_LIFETIME = datetime.timedelta(hours=1)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """A spec that cannot be acted on. ``field`` is the JSON path, e.g. ``spec.tokenURL``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AuthMethod(enum.StrEnum):
    """How the client authenticates to the token endpoint."""

    AUTO = "auto"
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    CLIENT_SECRET_JSON = "client_secret_json"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientCredentials:
    """The client id and secret read from the client Secret. Never printed."""

    client_id: str
    client_secret: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRequest:
    """Everything the token client needs besides the credentials themselves."""

    token_url: str
    auth_method: AuthMethod = AuthMethod.AUTO
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resources: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    client_id_key: str = "client_id"
    client_secret_key: str = "client_secret"


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
class CredentialSpec:
    request: TokenRequest
    secret_ref: SecretRef
    client_id: str | None
    refresh: RefreshPolicy
    target: TargetSpec


def parse_duration(value: object, *, field: str) -> datetime.timedelta:
    """Parse a Go-style duration (``90s``, ``5m``, ``1h30m``, ``250ms``); negative is an error."""
    if not isinstance(value, str) or not value:
        raise SpecError(field, "must be a duration such as 30s, 5m or 1h")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise SpecError(field, f"invalid duration {value!r}: use units ms, s, m, h (e.g. 1h30m)")
    return datetime.timedelta(seconds=total)


def _str(spec: Mapping[str, Any], key: str, *, field: str, required: bool = False) -> str | None:
    value = spec.get(key)
    if value is None:
        if required:
            raise SpecError(f"{field}.{key}", "is required")
        return None
    if not isinstance(value, str) or (required and not value):
        raise SpecError(f"{field}.{key}", "must be a non-empty string")
    return value


def _str_list(value: object, *, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(field, "must be a list of non-empty strings")
    return tuple(value)


def _str_map(value: object, *, field: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(field, "must be a map of strings")
    return tuple(sorted(value.items()))


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
        if isinstance(percentage, bool) or not isinstance(percentage, int | float):
            raise SpecError("spec.refresh.renewBeforePercentage", "must be a number")
        if not 0 < percentage < 100:
            raise SpecError("spec.refresh.renewBeforePercentage", "must be between 0 and 100")
        percentage = float(percentage)
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
        renew_before_percentage=percentage,
        min_interval=min_interval,
        default_lifetime=default_lifetime,
    )


def parse_spec(spec: Mapping[str, Any], *, name: str) -> CredentialSpec:
    """Turn a raw ``spec`` into a :class:`CredentialSpec` (``name`` is metadata.name)."""
    token_url = _str(spec, "tokenURL", field="spec", required=True)
    assert token_url is not None
    method_raw = spec.get("authMethod", AuthMethod.AUTO.value)
    try:
        auth_method = AuthMethod(method_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in AuthMethod)
        raise SpecError("spec.authMethod", f"must be one of {allowed}") from None

    ref_raw = spec.get("clientSecretRef")
    if not isinstance(ref_raw, Mapping):
        raise SpecError("spec.clientSecretRef", "is required")
    ref_name = _str(ref_raw, "name", field="spec.clientSecretRef", required=True)
    assert ref_name is not None
    secret_ref = SecretRef(
        name=ref_name,
        client_id_key=_str(ref_raw, "clientIDKey", field="spec.clientSecretRef") or "client_id",
        client_secret_key=_str(ref_raw, "clientSecretKey", field="spec.clientSecretRef")
        or "client_secret",
    )

    target_raw = spec.get("target") or {}
    if not isinstance(target_raw, Mapping):
        raise SpecError("spec.target", "must be an object")
    target_name = _str(target_raw, "name", field="spec.target") or f"{name}-token"
    if len(target_name) > 253 or not _DNS_SUBDOMAIN.match(target_name):
        raise SpecError("spec.target.name", f"{target_name!r} is not a valid Secret name")
    target = TargetSpec(
        name=target_name,
        labels=_str_map(target_raw.get("labels"), field="spec.target.labels"),
        annotations=_str_map(target_raw.get("annotations"), field="spec.target.annotations"),
    )

    request = TokenRequest(
        token_url=token_url,
        auth_method=auth_method,
        scopes=_str_list(spec.get("scopes"), field="spec.scopes"),
        audience=_str(spec, "audience", field="spec"),
        resources=_str_list(spec.get("resources"), field="spec.resources"),
        extra_params=_str_map(spec.get("extraParams"), field="spec.extraParams"),
    )
    return CredentialSpec(
        request=request,
        secret_ref=secret_ref,
        client_id=_str(spec, "clientID", field="spec"),
        refresh=_parse_refresh(spec.get("refresh")),
        target=target,
    )
