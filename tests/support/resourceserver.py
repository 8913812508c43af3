"""A resource server for consumer pods: it accepts a bearer token (RFC 6750) only if the
authorization server says it issued it and it has not expired, and records every call.

This is the consumer's side of the contract the operator keeps: what matters is not that
the Secret holds a fresh token but that a workload reading it never presents one the
resource server refuses. The server asks ``verify`` (``TokenServer.verify``: issued there,
not expired) for each call and remembers when each consumer first presented each token, so
a test can tell how long after a refresh a pod started using the new token.

It listens where the pods reach the host (``Node.host_ip``, the node's bridge address) and
serves ``GET /resource?consumer=<name>``: 200 for a good token, 401 otherwise.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
import urllib.parse
from collections.abc import Callable
from types import TracebackType


@dataclasses.dataclass(frozen=True)
class Call:
    """One request: when it arrived (``time.time()``), who made it, with which token."""

    at: float
    consumer: str
    token: str = dataclasses.field(repr=False)
    accepted: bool


class ResourceServer:
    """A threaded HTTP server on ``host`` that checks bearer tokens with ``verify``."""

    def __init__(self, verify: Callable[[str], bool], *, host: str = "127.0.0.1") -> None:
        self.verify = verify
        self.host = host
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("ResourceServer is not running")
        return f"http://{self.host}:{self._server.server_port}/resource"

    def calls(self, consumer: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if consumer is None or c.consumer == consumer]

    def rejected(self) -> list[Call]:
        return [c for c in self.calls() if not c.accepted]

    def first_seen(self, consumer: str) -> dict[str, float]:
        """When ``consumer`` first presented each token it presented."""
        seen: dict[str, float] = {}
        for call in self.calls(consumer):
            seen.setdefault(call.token, call.at)
        return seen

    def _record(self, consumer: str, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        accepted = scheme.lower() == "bearer" and bool(token) and self.verify(token)
        with self._lock:
            self._calls.append(Call(time.time(), consumer, token, accepted))
        return accepted

    def start(self) -> ResourceServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/resource":
                    self.send_error(404)
                    return
                consumer = urllib.parse.parse_qs(url.query).get("consumer", ["?"])[0]
                if owner._record(consumer, self.headers.get("Authorization", "")):
                    self._answer(200, b"ok\n")
                else:
                    self._answer(401, b"invalid token\n", 'Bearer error="invalid_token"')

            def _answer(self, code: int, body: bytes, challenge: str | None = None) -> None:
                self.send_response(code)
                if challenge:
                    self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per call from every pod every second is noise

        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="resourceserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ResourceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
