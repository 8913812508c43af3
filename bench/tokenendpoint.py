"""A fast loopback OAuth 2.0 token endpoint for the benchmarks (aiohttp, in a thread).

It issues random bearer tokens for any client_credentials request, with a lifetime the
benchmark sets (and changes) at will, and counts requests in 1-second buckets so that the
peak rate seen by the identity provider can be reported. It checks nothing else: the real
protocol is tested against the Authlib server in tests/; here only speed matters.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import secrets
import threading
import time
import urllib.parse
from typing import Any

from aiohttp import web


def client_id(authorization: str | None, form: Any) -> str:
    """The client id of a request: HTTP Basic's user name, else the form's client_id."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return urllib.parse.unquote(base64.b64decode(value).decode().partition(":")[0])
    return str(form.get("client_id", ""))


class FastTokenEndpoint:
    def __init__(self, *, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.requests = 0
        self.per_second: collections.Counter[int] = collections.Counter()
        self.last_request: dict[str, float] = {}  # client id -> arrival of its latest request
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def _token(self, request: web.Request) -> web.Response:
        arrived = time.time()
        form = await request.post()
        self.requests += 1
        self.per_second[int(arrived)] += 1
        self.last_request[client_id(request.headers.get("Authorization"), form)] = arrived
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    def __enter__(self) -> FastTokenEndpoint:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def series(self, since: float, until: float, step: int) -> list[int]:
        """Requests in each ``step`` seconds from ``since`` to ``until``."""
        start = int(since)
        return [
            sum(self.per_second[s] for s in range(t, min(t + step, int(until) + 1)))
            for t in range(start, int(until) + 1, step)
        ]

    def peak_rate(self, since: float, until: float) -> int:
        """The most requests in any whole second of [since, until]."""
        seconds = range(int(since), int(until) + 1)
        return max((self.per_second[s] for s in seconds), default=0)
