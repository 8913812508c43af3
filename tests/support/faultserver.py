"""A token endpoint that misbehaves on demand: 5xx, 429, hangs, garbage, huge bodies.

A real authorization server cannot be made to fail in the ways the operator's error
taxonomy must handle, so this one answers from a queue of scripted :class:`Fault` responses
(falling back to a default when the queue is empty) and records every request it gets. It is
deliberately plain ``http.server``: no framework sits between a test and the bytes it wants
on the wire.

It can also stand in front of a real authorization server: :meth:`Fault.forward` relays a
request to it and its answer back, so a test can switch one token URL between serving valid,
verifiable tokens and failing, and :meth:`FaultServer.stop` / :meth:`FaultServer.start` with
``port=`` turn it into "connection refused" and back on the same URL.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_JSON = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Fault:
    """One scripted response. Build them with the class methods."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = _JSON
    #: Seconds to wait before answering; released early when the server stops.
    delay: float = 0.0
    #: Send no Content-Length and close the connection after the body.
    unframed: bool = False
    #: Close the connection without sending any response.
    drop: bool = False
    #: Relay the request to this URL (a real token endpoint) and answer with its response.
    upstream: str | None = None

    @classmethod
    def token(cls, *, access_token: str = "fault-token", expires_in: object = 300) -> Fault:
        document: dict[str, object] = {"access_token": access_token, "token_type": "Bearer"}
        if expires_in is not None:
            document["expires_in"] = expires_in
        return cls(body=json.dumps(document).encode())

    @classmethod
    def server_error(cls, status: int = 503, *, retry_after: str | None = None) -> Fault:
        headers = _JSON + ((("Retry-After", retry_after),) if retry_after is not None else ())
        return cls(status=status, body=b'{"error":"server_error"}', headers=headers)

    @classmethod
    def rate_limited(cls, *, retry_after: str | None = "1") -> Fault:
        """429; ``retry_after`` is delay-seconds or an HTTP-date, as the header carries it."""
        headers = _JSON + ((("Retry-After", retry_after),) if retry_after is not None else ())
        return cls(status=429, body=b"{}", headers=headers)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        return cls(delay=seconds, body=Fault.token().body)

    @classmethod
    def garbage(cls, data: bytes = b"\x00\xff<html>not json") -> Fault:
        return cls(body=data, headers=(("Content-Type", "text/html"),))

    @classmethod
    def missing_fields(cls) -> Fault:
        return cls(body=b'{"token_type":"Bearer","expires_in":300}')

    @classmethod
    def oauth_error(cls, code: str, *, status: int = 400, description: str = "") -> Fault:
        document = {"error": code, "error_description": description}
        return cls(status=status, body=json.dumps(document).encode())

    @classmethod
    def error_200(cls, code: str = "invalid_client") -> Fault:
        return cls.oauth_error(code, status=200)

    @classmethod
    def huge(cls, size: int = 2 * 1024 * 1024, *, unframed: bool = False) -> Fault:
        return cls(body=b" " * size, unframed=unframed)

    @classmethod
    def disconnect(cls) -> Fault:
        """Hang up without answering (what a crashing server or a reset connection does)."""
        return cls(drop=True)

    @classmethod
    def redirect(cls, location: str, *, status: int = 302) -> Fault:
        return cls(status=status, headers=(("Location", location),))

    @classmethod
    def forward(cls, url: str, *, delay: float = 0.0) -> Fault:
        """Relay the request to the token endpoint ``url`` and its answer back (502 if it is
        unreachable). With ``delay``, hang first: a hang that :meth:`FaultServer.release`
        ends is then answered by the real server, like a provider that comes back."""
        return cls(upstream=url, delay=delay, headers=())


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    #: Wall-clock time (``time.time()``) at which the request was read, before any delay.
    at: float = field(default_factory=time.time)


class FaultServer:
    """Scripted token endpoint on 127.0.0.1 (or another loopback ``host``); use as a
    context manager.

    ``push(*faults)`` queues responses, served first in first out; when the queue is empty
    every request gets ``default`` (a valid token unless changed).
    """

    def __init__(self, *, default: Fault | None = None, host: str = "127.0.0.1") -> None:
        self.default = default or Fault.token()
        self.host = host
        self._queue: collections.deque[Fault] = collections.deque()
        self._recorded: list[Recorded] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._connections: set[socket.socket] = set()

    @property
    def port(self) -> int:
        """The port of the last start (still known after :meth:`stop`, for a restart)."""
        return self._port

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultServer is not running")
        return f"http://{self.host}:{self._server.server_port}/token"

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._recorded)

    def requests_since(self, moment: float) -> list[Recorded]:
        """Requests read at or after ``moment`` (a ``time.time()`` value)."""
        return [r for r in self.requests if r.at >= moment]

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._queue.extend(faults)

    def release(self) -> None:
        """Let hanging responses finish now."""
        self._released.set()

    def start(self, *, port: int = 0) -> FaultServer:
        """Listen on ``port`` (0: any free port; ``self.port`` after a stop: the same URL)."""
        self._released.clear()
        self._server = _QuietServer((self.host, port), _handler_for(self))
        self._port = self._server.server_port
        self._thread = threading.Thread(
            # A short poll keeps stop() fast: shutdown() waits for the loop's next check.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faultserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, *, sever: bool = False) -> None:
        """Stop listening. Connections already open (keep-alive) are still served until
        their clients close them: set ``default = Fault.disconnect()`` first for an outage,
        or pass ``sever=True`` to shut them down too (then every new request is refused)."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if sever:
            with self._lock:
                open_connections = list(self._connections)
            for connection in open_connections:
                # OSError: its handler closed it meanwhile.
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _next(self, record: Recorded) -> Fault:
        with self._lock:
            self._recorded.append(record)
            return self._queue.popleft() if self._queue else self.default

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


#: Request headers a relay passes on; hop-by-hop ones (Connection, Host...) stay behind.
_FORWARDED_REQUEST = ("authorization", "content-type", "accept")
#: Response headers a relay passes back.
_FORWARDED_RESPONSE = ("content-type", "cache-control", "pragma", "www-authenticate", "retry-after")
# Never through an HTTP proxy from the environment: the upstream is on loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _relay(url: str, headers: Any, body: bytes) -> Fault:
    """Send the request to ``url``; its answer as a Fault (502 when it cannot be reached)."""
    forwarded = {k: v for k, v in headers.items() if k.lower() in _FORWARDED_REQUEST}
    request = urllib.request.Request(url, data=body, headers=forwarded, method="POST")
    try:
        with _DIRECT.open(request, timeout=30) as response:
            status, reply_headers, data = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, reply_headers, data = error.code, error.headers, error.read()
    except (urllib.error.URLError, OSError):
        return Fault.server_error(502)
    kept = tuple((k, v) for k, v in reply_headers.items() if k.lower() in _FORWARDED_RESPONSE)
    return Fault(status=status, body=data, headers=kept)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response is what most faults provoke; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(owner: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            owner._track(self.connection, add=True)

        def finish(self) -> None:
            owner._track(self.connection, add=False)
            super().finish()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            fault = owner._next(Recorded(self.command, self.path, dict(self.headers.items()), body))
            if fault.delay:
                owner._released.wait(fault.delay)
            if fault.drop:
                self.close_connection = True
                return
            if fault.upstream is not None:
                fault = _relay(fault.upstream, self.headers, body)
            try:
                self._answer(fault)
            except OSError:
                # The client gave up (timeout, body cap): that is the point of most faults.
                self.close_connection = True

        def _answer(self, fault: Fault) -> None:
            self.send_response(fault.status)
            for name, value in fault.headers:
                self.send_header(name, value)
            if fault.unframed:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(fault.body)))
            self.end_headers()
            view = memoryview(fault.body)
            for start in range(0, len(view), 64 * 1024):
                self.wfile.write(view[start : start + 64 * 1024])
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are recorded instead

    return Handler
