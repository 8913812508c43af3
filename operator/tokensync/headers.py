"""Which extra request headers a credential may send (spec.requestHeaders, decision 0044).

Some token endpoints sit behind gateways that want an API key or a tenant in a header.
tokensync lets a credential add headers to its token and discovery requests, but not the
ones it must own: what frames the request (Host, Content-Type, Content-Length and the
hop-by-hop headers), what keeps the response within its cap (Accept-Encoding: a
compressed body could expand far past it), what the response parser relies on (Accept),
and Authorization, always, whether or not the client authentication method sets it: a
header that sometimes overrides the client's proof and sometimes does not depends on
which method ``auto`` settles on, and an API key has other headers to go in. The CRD
refuses the same names at admission; this module is the second line and the one list.

A header value goes on the wire as given, so it must be one line of visible ASCII (tabs
and spaces inside): a CR or LF would start a header of the tenant's choosing. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Header names tokensync owns, lower case, with why (the CRD's rule lists the same names).
RESERVED: Mapping[str, str] = {
    "authorization": "the client authentication method owns it; put an API key in another header",
    "proxy-authorization": "tokensync sends no proxy credentials",
    "content-type": "tokensync sets it for the body it sends",
    "content-length": "tokensync sets it for the body it sends",
    "host": "tokensync sets it from the URL",
    "accept": "tokensync reads JSON and asks for it",
    "accept-encoding": "tokensync asks for an uncompressed body, to keep it within its cap",
    "connection": "hop-by-hop headers belong to the HTTP client",
    "keep-alive": "hop-by-hop headers belong to the HTTP client",
    "proxy-connection": "hop-by-hop headers belong to the HTTP client",
    "transfer-encoding": "hop-by-hop headers belong to the HTTP client",
    "te": "hop-by-hop headers belong to the HTTP client",
    "trailer": "hop-by-hop headers belong to the HTTP client",
    "upgrade": "hop-by-hop headers belong to the HTTP client",
    "expect": "tokensync sends its body at once",
    "cookie": "tokensync keeps no cookies; a session is not a client credential",
}

#: An RFC 9110 token (section 5.1, field-name = token).
NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: One line of visible ASCII, spaces and tabs inside (RFC 9110 section 5.5, without
#: obs-text: httpx sends header values as ASCII).
VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
#: The longest value taken from a Secret (an inline one is bounded by the CRD).
MAX_SECRET_VALUE = 8192


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a request header, or None."""
    if not NAME.fullmatch(name):
        return f"{name!r} is not an HTTP header name (RFC 9110 token characters only)"
    why = RESERVED.get(name.lower())
    if why is not None:
        return f"must not set {name}: {why}"
    return None


def valid_value(value: str) -> bool:
    """Can ``value`` go on the wire as one header line? (Never put the value in a message.)"""
    return bool(VALUE.fullmatch(value))
