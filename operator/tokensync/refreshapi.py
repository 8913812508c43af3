"""The refresh endpoint: a workload whose token was refused asks for a new one.

``POST /v1/namespaces/{namespace}/clientcredentials/{name}/refresh`` with the header
``X-Token-SHA256: <hex SHA-256 of the token the caller holds>``. It needs no Kubernetes
rights, only the token: the proof of possession (``possession``, decision 0043). This is
the thin HTTP layer: the path and header read, the endpoint's global bounds, and
``Reconciler.refresh_asked``'s reply written as HTTP. Served by aiohttp, which kopf already
depends on, on the operator's event loop, on a port of its own, so that a NetworkPolicy
can open it to workloads and nothing else.

Any tenant's pod may call it, so it is bounded as a whole before any proof is looked at:
connections, requests in flight, requests per second, the size of the request line and
headers; a body is never read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Protocol

from aiohttp import web, web_protocol

from tokensync import metrics, possession, scheduler

logger = logging.getLogger(__name__)

PROOF_HEADER = "X-Token-SHA256"
#: Connections open at once; one beyond is closed as it is accepted.
MAX_CONNECTIONS = 256
#: Requests being answered at once; beyond, 429 at once.
MAX_IN_FLIGHT = 32
#: Requests per second over all callers (and at once): a tenant cannot starve the others'
#: refreshes, nor the event loop the operator's work runs on.
RATE = 50.0
BURST = 100
#: An idle keep-alive connection is closed after this many seconds.
KEEPALIVE_SECONDS = 5.0
#: The request line and each header: a path of two Kubernetes names fits in 600 bytes.
MAX_LINE = 1024
MAX_FIELD = 1024
MAX_HEADERS = 32

# Names as Kubernetes allows them: a namespace is a DNS label, a ClientCredential a
# DNS subdomain.
_PATH = re.compile(
    r"/v1/namespaces/(?P<namespace>[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)"
    r"/clientcredentials/(?P<name>[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)/refresh"
)
_PREFIX = "/v1/namespaces/"

_STATUS = {
    possession.Answer.REQUESTED: 202,
    possession.Answer.ALREADY_REQUESTED: 202,
    possession.Answer.STALE: 200,
    possession.Answer.REFUSED: 403,
    possession.Answer.RATE_LIMITED: 429,
    possession.Answer.BUSY: 429,
    possession.Answer.ELSEWHERE: 503,
}
_MESSAGE = {
    possession.Answer.REQUESTED: "a new token was asked for; read the Secret again after refreshAt",
    possession.Answer.ALREADY_REQUESTED: "a new token was already asked for this token",
    possession.Answer.STALE: "a newer token is in the Secret already: read it again",
    # The same words whatever was wrong: the credential missing, the proof wrong or
    # malformed, a token of another credential.
    possession.Answer.REFUSED: "no ClientCredential here holds a token with this SHA-256",
    possession.Answer.RATE_LIMITED: "too many requests for this ClientCredential",
    possession.Answer.BUSY: "too many requests",
    possession.Answer.ELSEWHERE: "another replica refreshes this ClientCredential: ask again",
}


class Asks(Protocol):
    """What the endpoint needs of the reconciler."""

    async def refresh_asked(
        self, namespace: str, name: str, proof: bytes | None
    ) -> possession.Reply: ...


class _Server(web.Server):
    """aiohttp's low-level server, closing connections beyond :data:`MAX_CONNECTIONS`."""

    def connection_made(
        self, handler: web_protocol.RequestHandler, transport: asyncio.Transport
    ) -> None:
        super().connection_made(handler, transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.abort()


class RefreshApi:
    def __init__(
        self,
        *,
        asks: Asks,
        metrics_: metrics.Metrics,
        port: int,
        address: str,
        budget: scheduler.Budget | None = None,
    ) -> None:
        self._asks = asks
        self._metrics = metrics_
        self._port, self._address = port, address
        self._budget = budget or scheduler.Budget(rate=RATE, burst=BURST)
        self._in_flight = 0
        self._runner: web.ServerRunner | None = None

    async def start(self) -> None:
        """Listen; raises when the port cannot be bound (the operator does not start then)."""
        server = _Server(
            self.handle,
            keepalive_timeout=KEEPALIVE_SECONDS,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            lingering_time=0.0,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._address, self._port).start()
        logger.info("refresh endpoint on port %d", self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        match = _PATH.fullmatch(request.path)
        if match is None and not request.path.startswith(_PREFIX):
            return _json(404, {"message": "not found"})
        if request.method != "POST":
            return _json(405, {"message": "POST only"}, headers={"Allow": "POST"})
        if self._in_flight >= MAX_IN_FLIGHT or not self._budget.take():
            return self._answer(possession.Reply(possession.Answer.BUSY, retry_after=1.0))
        self._in_flight += 1
        try:
            proof = possession.parse_proof(request.headers.get(PROOF_HEADER))
            if match is None:  # not a name Kubernetes allows: no such credential
                reply = possession.Reply(possession.Answer.REFUSED)
            else:
                reply = await self._asks.refresh_asked(match["namespace"], match["name"], proof)
        finally:
            self._in_flight -= 1
        response = self._answer(reply)
        if request.body_exists:
            response.force_close()  # the body is never read: no keep-alive after it
        return response

    def _answer(self, reply: possession.Reply) -> web.Response:
        self._metrics.refresh_asks.labels(reply.answer.value).inc()
        body: dict[str, Any] = {"outcome": reply.answer.value, "message": _MESSAGE[reply.answer]}
        headers = {}
        if reply.answer in (
            possession.Answer.RATE_LIMITED,
            possession.Answer.BUSY,
            possession.Answer.ELSEWHERE,
        ):
            headers["Retry-After"] = str(max(1, round(reply.retry_after)))
        return _json(_STATUS[reply.answer], {**body, **reply.summary}, headers=headers)


def _json(
    status: int, body: dict[str, Any], *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, sort_keys=True) + "\n",
        content_type="application/json",
        headers=headers,
    )
