"""Where a client's proof may be presented, as its owner said (decision 0032).

The opt-in label says that a Secret may serve as client credentials; it does not say where
they may go. Anyone allowed to create a ClientCredential in the namespace could otherwise
point ``tokenURL`` at a host of their own and receive a labelled client secret, a signed
assertion, or a ServiceAccount token. So every Secret (and ServiceAccount) that proves a
client names its destinations in the annotation ``tokensync.dev/allowed-destinations``,
and a credential pointing anywhere else is refused before a byte is sent.

Each entry, separated by commas or white space, is one of:

- a URL with a path: exactly that token URL, or that issuer (``spec.issuerURL``: its
  discovery document, checked to be its own, then names the token endpoint), e.g.
  ``https://login.example.com/oauth2/token``;
- an origin, a URL without a path: any path there, e.g. ``https://login.example.com``;
- a host name or address alone: any scheme and port on that host, e.g. ``login.example.com``.

Schemes and host names compare case-insensitively, default ports are implied, and a
trailing slash is ignored. Pure.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tokensync import failures, model

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclasses.dataclass(frozen=True, slots=True)
class _Place:
    scheme: str
    host: str
    port: int | None
    path: str
    query: str


def _place(url: str) -> _Place | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if not scheme or not host:
        return None
    return _Place(
        scheme=scheme,
        host=host,
        port=port or _DEFAULT_PORTS.get(scheme),
        path=parts.path.rstrip("/"),
        query=parts.query,
    )


def _host(entry: str) -> str:
    return entry.lower().rstrip(".").removeprefix("[").removesuffix("]")


def listed(source: Mapping[str, Any]) -> tuple[str, ...]:
    """The destinations a Secret's or ServiceAccount's annotation lists."""
    annotations = (source.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(model.ALLOWED_DESTINATIONS_ANNOTATION)
    return tuple(value.replace(",", " ").split()) if isinstance(value, str) else ()


def matches(entry: str, url: str) -> bool:
    """Does one annotation entry allow ``url``?"""
    wanted = _place(url)
    if wanted is None:
        return False
    if "://" not in entry:
        return _host(entry) == wanted.host
    place = _place(entry)
    if place is None or (place.scheme, place.host, place.port) != (
        wanted.scheme,
        wanted.host,
        wanted.port,
    ):
        return False
    if not place.path and not place.query:
        return True  # an origin: any path there
    return (place.path, place.query) == (wanted.path, wanted.query)


def allows(source: Mapping[str, Any], url: str) -> bool:
    """May the proof in ``source`` be presented at ``url`` (the token URL, or the issuer
    whose discovery document names it)?"""
    return any(matches(entry, url) for entry in listed(source))


def refused(kind: str, name: str, url: str) -> failures.Failure:
    """The failure for a source that does not allow the destination: nothing is sent."""
    return failures.Failure(
        failures.Reason.DESTINATION_NOT_ALLOWED,
        f"{kind} {name!r} does not allow its proof to be sent to {url}: its annotation "
        f"{model.ALLOWED_DESTINATIONS_ANNOTATION} must list that URL, its origin or its host; "
        "nothing was sent",
        kind=failures.Kind.PERMANENT,
    )
