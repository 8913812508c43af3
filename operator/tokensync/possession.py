"""A workload proves it holds a credential's current token and asks for a new one.

A consumer whose token was refused needs a new one, and a workload should not need patch
rights on its ClientCredential for that (issue 16, decision 0043). It sends the SHA-256 of
the token it holds (the *proof*, 64 hex digits) to the operator's refresh endpoint; the
token itself never travels there. The operator keeps no token either: it keeps a 16-byte
*token id*, a digest of the proof (:func:`token_id`), for the current token and the one
before, and writes the current id into the target Secret (``target.TOKEN_ID_ANNOTATION``),
so that a restarted operator knows it without fetching. Reading the id does not give the
proof: it is a hash of it.

:func:`judge` says what a proof gets; :class:`Limiter` bounds how often one credential's
proofs are answered. Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import hmac
import math
import re
from collections.abc import Mapping

#: Bytes of a token id: 128 bits, as much as any collision or guess needs, and small
#: enough to keep two per credential (issue 19 wants per-credential memory cut).
ID_BYTES = 16
#: What a malformed, unknown or wrong proof is compared with: no id has length 0, so the
#: comparison fails, and costs the same whether the credential exists or not.
_NO_ID = b""
_PROOF = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{32}")
#: A header value longer than this is not a proof, with any amount of blanks around it.
_PROOF_TEXT_MAX = 128
#: The Event posted on the credential when a refresh is asked for.
EVENT_REASON = "RefreshRequested"


def proof_of(token: str) -> str:
    """The proof a holder of ``token`` sends: its SHA-256 in lower-case hex
    (``printf %s "$TOKEN" | sha256sum``)."""
    return hashlib.sha256(token.encode()).hexdigest()


def proof_id(proof: str) -> bytes:
    """The token id a proof stands for: the first 16 bytes of SHA-256 over the proof's hex."""
    return hashlib.sha256(proof.encode("ascii")).digest()[:ID_BYTES]


def token_id(token: str) -> bytes:
    """The id of a token: computed when the token is written, then the token is dropped."""
    return proof_id(proof_of(token))


def parse_proof(text: str | None) -> bytes | None:
    """The token id of a proof as sent (64 hex digits, either case, surrounding blanks
    ignored); None when it is not one."""
    if text is None or len(text) > _PROOF_TEXT_MAX:
        return None
    text = text.strip().lower()
    return proof_id(text) if _PROOF.fullmatch(text) else None


def format_id(value: bytes) -> str:
    return value.hex()


def parse_id(text: object) -> bytes | None:
    """A token id as the target Secret's annotation holds it (32 hex digits); None else."""
    if not isinstance(text, str) or not _ID.fullmatch(text):
        return None
    return bytes.fromhex(text)


class Answer(enum.StrEnum):
    """What a refresh request gets; the values are the metric's ``outcome`` label."""

    #: The proof of the current token, the first for it: a refresh is scheduled (202).
    REQUESTED = "requested"
    #: The proof of the current token again: its refresh is already asked for (202).
    ALREADY_REQUESTED = "already_requested"
    #: The proof of the token before: a newer one is in the Secret already (200, a no-op).
    STALE = "stale"
    #: Anything else, the same answer whatever the reason (403).
    REFUSED = "refused"
    #: A valid proof, beyond its credential's rate (429).
    RATE_LIMITED = "rate_limited"
    #: Beyond the endpoint's global bounds, before any proof is looked at (429).
    BUSY = "busy"
    #: A valid proof of the current token, but another replica serves the credential:
    #: ask again, the Service may send the request there (503, decision 0050).
    ELSEWHERE = "elsewhere"


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """What the refresh endpoint answers: nothing secret, and for REFUSED nothing at all."""

    answer: Answer
    #: RATE_LIMITED and BUSY: seconds until a request could succeed (Retry-After).
    retry_after: float = 0.0
    #: For a valid proof: the credential's Ready status, expiresAt, and when the refresh
    #: asked for runs (refreshAt).
    summary: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    """What the operator knows of one credential's tokens (``tracking.Record``)."""

    current: bytes | None
    previous: bytes | None
    #: The id of the token a refresh was last asked for.
    asked: bytes | None


def _matches(proof: bytes, known: bytes | None) -> bool:
    # Constant time in the proof: a caller learns nothing from how long a refusal takes.
    return hmac.compare_digest(proof, known if known is not None else _NO_ID)


def judge(proof: bytes | None, known: Known | None) -> Answer:
    """What a refresh request with ``proof`` (a token id from :func:`parse_proof`) gets for
    a credential (``known``; None: no such credential, or not watched), before the rate.

    At most one refresh per token version: the current token's proof asks once; asked
    again it is told so. The previous token's proof is a no-op: the caller should read the
    Secret again. Everything else is refused alike, so that a caller who holds no token
    of a credential cannot tell whether it exists.
    """
    candidate = proof if proof is not None else bytes(ID_BYTES)
    current = _matches(candidate, known.current if known else None)
    previous = _matches(candidate, known.previous if known else None)
    if proof is None or known is None:
        return Answer.REFUSED
    if current:
        asked = known.asked is not None and hmac.compare_digest(known.asked, proof)
        return Answer.ALREADY_REQUESTED if asked else Answer.REQUESTED
    return Answer.STALE if previous else Answer.REFUSED


def refresh_at(
    *,
    issued_at: datetime.datetime | None,
    min_interval: datetime.timedelta,
    now: datetime.datetime,
) -> datetime.datetime:
    """When an asked-for refresh runs: now, but no sooner than ``minInterval`` after the
    current token was issued, the guard a changed target honours too (decision 0035): a
    caller who gets every new token must not turn the endpoint into a loop of requests."""
    if issued_at is None:
        return now
    return max(now, issued_at + min_interval)


class Limiter:
    """A token bucket per key (a credential): ``burst`` requests at once, ``rate`` per second
    on average. Only requests with a valid proof are counted, so nobody without a token can
    spend a credential's share. A key whose bucket is full again is forgotten, so the map
    holds only keys asked for in the last ``burst / rate`` seconds."""

    def __init__(self, *, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key: (tokens, at)
        self._swept = -math.inf

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: tuple[str, str], *, now: float) -> float:
        """0.0 when the request may proceed (and it is counted); else the seconds until it
        could, rounded up."""
        self._forget_full(now)
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return float(math.ceil((1.0 - tokens) / self._rate))
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        # At most once a second: the walk costs one step per key asked for lately.
        if now - self._swept < 1.0:
            return
        self._swept = now
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= self._burst:
                del self._buckets[key]
