"""A real OAuth 2.0 authorization server (client credentials grant) for tests.

The token client must be proven against an independent implementation of RFC 6749, not
against mocks that share its author's reading of the RFC. This server is Authlib's, run by
Flask under werkzeug on a loopback port in a background thread, with clients held in memory
so that tests can rotate secrets, restrict authentication methods and change lifetimes, and
then ask which tokens were issued and whether a given token is one of them and still valid.

Authlib knows client_secret_basic and client_secret_post. client_secret_json (credentials in
a JSON body, as some providers accept) is added as a custom client authentication method; a
small WSGI middleware turns the JSON body into the form Authlib parses and marks the request,
so that each of the three methods can be allowed or refused per client.
"""

from __future__ import annotations

import io
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Literal

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.authenticate_client import authenticate_client_secret_post
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from flask import Flask
from flask import request as flask_request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

ALL_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_json")
TOKEN_PATH = "/oauth2/token"
# Set by the middleware on requests whose body arrived as JSON.
_JSON_MARKER = "tokensync.test.json_body"


@dataclass(frozen=True)
class Issued:
    """One token the server handed out."""

    client_id: str
    auth_method: str
    scope: str | None
    issued_at: datetime
    expires_at: datetime
    access_token: str = field(repr=False)


@dataclass(frozen=True)
class _Client:
    """Duck-typed Authlib client model (the methods Authlib calls for this grant)."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_methods: frozenset[str]
    scopes: frozenset[str] | None

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str | None) -> str | None:
        requested = (scope or "").split()
        if self.scopes is not None and not set(requested) <= self.scopes:
            return None  # Authlib answers invalid_scope
        return " ".join(requested)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(ALL_METHODS)


def _authenticate_post(query_client: Any, request: Any) -> Any:
    # Authlib's own check, but only for a real form body: a JSON body is another method.
    if flask_request.environ.get(_JSON_MARKER):
        return None
    return authenticate_client_secret_post(query_client, request)


def _authenticate_json(query_client: Any, request: Any) -> Any:
    if not flask_request.environ.get(_JSON_MARKER):
        return None
    return authenticate_client_secret_post(query_client, request)


class _JsonBodyAsForm:
    """WSGI middleware: a JSON object body becomes the form body Authlib expects."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length)
            try:
                document = json.loads(raw)
            except ValueError:
                document = None
            if isinstance(document, dict):
                pairs = [
                    (key, str(item))
                    for key, value in document.items()
                    for item in (value if isinstance(value, list) else [value])
                ]
                raw = urllib.parse.urlencode(pairs).encode()
                environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
                environ[_JSON_MARKER] = True
            environ["wsgi.input"] = io.BytesIO(raw)
            environ["CONTENT_LENGTH"] = str(len(raw))
        return self.app(environ, start_response)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # tests inspect .issued and .requests; an access log per request is noise


class TokenServer:
    """Authlib authorization server on 127.0.0.1; use as a context manager.

    ``token_format`` is ``"jwt"`` (HS256 with ``exp``) or ``"opaque"``; with
    ``send_expires_in`` false the response omits ``expires_in`` so that clients must fall
    back to the JWT ``exp`` or their default lifetime.
    """

    def __init__(
        self,
        *,
        lifetime: int = 3600,
        token_format: Literal["jwt", "opaque"] = "jwt",
        send_expires_in: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.lifetime = lifetime
        self._ssl_context = ssl_context
        self.token_format = token_format
        self.send_expires_in = send_expires_in
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._issued: dict[str, Issued] = {}
        self._requests = 0
        self._key = secrets.token_bytes(32)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._app = self._build_app()

    # -- test API ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("TokenServer is not running")
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_port}{TOKEN_PATH}"

    @property
    def requests(self) -> int:
        """Requests received at the token endpoint, successful or not."""
        with self._lock:
            return self._requests

    @property
    def issued(self) -> list[Issued]:
        with self._lock:
            return list(self._issued.values())

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        auth_methods: Iterable[str] = ALL_METHODS,
        scopes: Iterable[str] | None = None,
    ) -> None:
        """Register a client; ``scopes=None`` allows any scope."""
        methods = frozenset(auth_methods)
        unknown = methods - set(ALL_METHODS)
        if unknown:
            raise ValueError(f"unknown auth methods: {sorted(unknown)}")
        client = _Client(
            client_id=client_id,
            client_secret=client_secret,
            auth_methods=methods,
            scopes=None if scopes is None else frozenset(scopes),
        )
        with self._lock:
            self._clients[client_id] = client

    def set_secret(self, client_id: str, new_secret: str) -> None:
        """Rotate a client's secret; the old one stops working at once."""
        with self._lock:
            current = self._clients[client_id]
            self._clients[client_id] = _Client(
                client_id=client_id,
                client_secret=new_secret,
                auth_methods=current.auth_methods,
                scopes=current.scopes,
            )

    def verify(self, access_token: str) -> bool:
        """Introspection: was this token issued here, and is it still valid?"""
        with self._lock:
            record = self._issued.get(access_token)
        return record is not None and record.expires_at > datetime.now(UTC)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TokenServer:
        self._server = make_server(
            "127.0.0.1",
            0,
            self._app,
            threaded=True,
            request_handler=_QuietHandler,
            ssl_context=self._ssl_context,
        )
        self._thread = threading.Thread(
            # A short poll keeps stop() fast: shutdown() waits for the loop's next check.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="tokenserver",
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

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- Authlib wiring ------------------------------------------------------------------

    def _build_app(self) -> Any:
        app = Flask(__name__)
        server = AuthorizationServer(app, query_client=self._query_client, save_token=self._save)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=self._new_access_token,
                expires_generator=lambda client, grant_type: (
                    self.lifetime if self.send_expires_in else 0
                ),
            ),
        )
        server.register_grant(_ClientCredentialsGrant)
        server.register_client_auth_method("client_secret_post", _authenticate_post)
        server.register_client_auth_method("client_secret_json", _authenticate_json)

        @app.post(TOKEN_PATH)
        def token() -> Any:
            with self._lock:
                self._requests += 1
            return server.create_token_response()

        return _JsonBodyAsForm(app.wsgi_app)

    def _query_client(self, client_id: str) -> _Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def _new_access_token(self, *, client: _Client, grant_type: str, user: Any, scope: Any) -> str:
        if self.token_format == "opaque":
            return secrets.token_urlsafe(32)
        now = int(time.time())
        claims = {
            "sub": client.client_id,
            "iat": now,
            "exp": now + self.lifetime,
            "scope": scope or "",
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def _save(self, token: dict[str, Any], request: Any) -> None:
        now = datetime.now(UTC)
        record = Issued(
            client_id=request.client.client_id,
            auth_method=request.auth_method,
            scope=token.get("scope"),
            issued_at=now,
            expires_at=now + timedelta(seconds=self.lifetime),
            access_token=token["access_token"],
        )
        with self._lock:
            self._issued[record.access_token] = record
