"""A real OAuth 2.0 authorization server (client credentials grant) for tests.

The token client must be proven against an independent implementation of the RFCs, not
against mocks that share its author's reading of them. This server is Authlib's, run by
Flask under werkzeug on a loopback port in a background thread, with clients held in memory
so that tests can rotate secrets and keys, restrict authentication methods and change
lifetimes, and then ask which tokens were issued, how the client authenticated, and whether
a given token is one of them and still valid.

Client authentication methods (each allowed or refused per client):

* ``client_secret_basic`` and ``client_secret_post``: Authlib's own.
* ``client_secret_json`` (credentials in a JSON body, as some providers accept): a custom
  method; a small WSGI middleware turns the JSON body into the form Authlib parses and marks
  the request.
* ``private_key_jwt`` and ``client_secret_jwt`` (RFC 7523 section 2.2, OIDC Core section 9):
  Authlib's ``JWTBearerClientAssertion``, registered once per method. Authlib checks the
  claims (iss, sub, aud, exp with 60 s leeway, iss == sub, jti through ``validate_jti``).
  The signature is checked here (PyJWT; HMAC with ``hmac``): Authlib hands joserfc no
  algorithm list, so the accepted algorithms would be joserfc's defaults rather than those
  of the method and key type, and joserfc (like PyJWT for short HMAC keys) warns, which
  this suite's ``filterwarnings`` turns into errors inside the server thread. The
  ``alg`` header decides the method (HS* is client_secret_jwt, keyed with the client
  secret; anything else private_key_jwt, with the registered JWKS). A ``kid`` must name a
  registered key; without one, keys are narrowed by ``x5t#S256`` when the JWKS carries it,
  then every key of the algorithm's type is tried. Also refused: HMAC secrets shorter than
  the hash (RFC 7518 section 3.2; ``enforce_hmac_key_length``), an ``exp`` more than
  ``max_assertion_lifetime`` ahead, a replayed ``jti``, and a ``client_id`` form field
  (optional) that is not the assertion's ``sub``.
* ``tls_client_auth`` and ``self_signed_tls_client_auth`` (RFC 8705 section 2): served on a
  second port (``mtls_url``, same path) whose TLS context comes from
  ``mtls_server_context``: CERT_OPTIONAL, so a client without a certificate still reaches
  the app and gets invalid_client. Python's ``ssl`` has no verify callback, so it cannot
  request a certificate without verifying it (nginx's ``optional_no_ca``); instead a
  self-signed client certificate is registered with ``tls_cert_pem`` and becomes a trust
  anchor of the mTLS context (OpenSSL reads the store at each handshake), and the app then
  compares its SHA-256 thumbprint. An unregistered self-signed certificate, or one from a
  CA the server does not trust, fails in the handshake, as on real servers. For
  ``tls_client_auth`` the app requires the certificate to be issued directly by one of the
  configured CAs (not merely a registered self-signed anchor) and its subject DN, or a SAN
  DNS name, to match the registration. The DER of the peer certificate reaches the WSGI
  environ through ``_CertHandler.make_environ``.
* ``workload_identity``: a client_assertion issued by an external issuer (a Kubernetes
  ServiceAccount token) for a client registered with ``add_federated_client``; the client is
  named by the ``client_id`` form field, the JWT is verified with the JWKS that the
  registration's ``fetch_jwks`` returns (asymmetric algorithms only), and iss, sub, aud and
  exp must match the registration. Replays are allowed: such tokens are bearer credentials
  reused until they expire.

Grants besides client credentials (decision 0047), each allowed per client with
``add_client(grant_types=...)``:

* the RFC 7523 JWT bearer grant: Authlib's ``JWTBearerGrant``; the assertion's ``iss``
  names the client, its signature is checked against the client's registered JWKS, its
  ``aud`` must be a token endpoint URL. It authenticates no client (RFC 7523 section 3.1).
* RFC 8693 token exchange: Authlib has no server for it, so ``_TokenExchangeGrant`` here is
  a small grant class on Authlib's ``BaseGrant``: the client authenticates as the client
  credentials grant's client does, or with ``none`` when registered so; the subject token
  must be a JWT that the registered ``subject_issuer``'s JWKS verifies (a ServiceAccount
  token in the e2e tests), with ``subject_token_type`` jwt, or one of this server's own
  valid access tokens with ``subject_token_type`` access_token (chaining);
  ``requested_token_type``, when sent, must be access_token. The audience, resources and
  subject are recorded.
* refresh tokens (decision 0048): with ``issue_refresh_tokens`` set, the client
  credentials grant's answers carry a refresh_token, and Authlib's ``RefreshTokenGrant``
  takes it back, rotating it (each use retires it and issues another).
  ``revoke_refresh_tokens`` makes every one of them invalid_grant.
* a custom grant type URI (``CUSTOM_GRANT_TYPE``): client credentials under another name,
  which also wants the ``account`` form parameter and records it.

Discovery (RFC 8414, OpenID Connect Discovery 1.0): with ``issuer_path`` and ``discovery``
the server publishes its metadata at ``<issuer>/.well-known/openid-configuration`` or at
``<origin>/.well-known/oauth-authorization-server<issuer path>``, and serves the token
endpoint under the issuer path.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import os
import secrets
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Literal

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    BaseGrant,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    TokenEndpointMixin,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc6749.authenticate_client import authenticate_client_secret_post
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from flask import Flask, jsonify
from flask import request as flask_request
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_json")
JWT_METHODS = ("private_key_jwt", "client_secret_jwt")
MTLS_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")
FEDERATED_METHOD = "workload_identity"
ALL_METHODS = (*SECRET_METHODS, *JWT_METHODS, *MTLS_METHODS, FEDERATED_METHOD)
TOKEN_PATH = "/oauth2/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
CUSTOM_GRANT_TYPE = "urn:example:params:oauth:grant-type:service-key"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ALL_GRANTS = ("client_credentials", JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, CUSTOM_GRANT_TYPE)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Algorithm -> (JWK kty, crv) of the keys that may verify it.
ASYMMETRIC_ALGS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
}
# Algorithm -> minimum key length in bytes (RFC 7518 section 3.2: at least the hash size).
HMAC_ALGS = {"HS256": 32, "HS384": 48, "HS512": 64}
# What a ServiceAccount token may be signed with (kube-apiserver signs with the type of its
# --service-account-signing-key-file: RS256 for RSA, ES256 for P-256 as in localcluster).
FEDERATION_ALGS = ("RS256", "PS256", "ES256", "ES384", "ES512")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Set by the middleware on requests whose body arrived as JSON.
_JSON_MARKER = "tokensync.test.json_body"
# Set by _CertHandler: the DER of the TLS client certificate, when one was presented.
PEER_CERT_ENVIRON = "tokensync.test.peer_cert_der"


@dataclass(frozen=True)
class Issued:
    """One token the server handed out, and how the client authenticated for it."""

    client_id: str
    auth_method: str
    scope: str | None
    issued_at: datetime
    expires_at: datetime
    access_token: str = field(repr=False)
    # The JOSE header of the client assertion (private_key_jwt, client_secret_jwt,
    # workload_identity): "alg", "kid", "x5t#S256", "typ" as sent.
    assertion_header: dict[str, Any] | None = None
    assertion_claims: dict[str, Any] | None = None
    # SHA-256 thumbprint (hex) of the TLS client certificate (tls_client_auth, self-signed).
    client_cert_sha256: str | None = None
    grant_type: str = "client_credentials"
    # The grant's own form parameters, as received (assertion and subject_token left out:
    # their claims are in grant_claims): audience, resource, the token types, account.
    grant_params: dict[str, list[str]] = field(default_factory=dict)
    # The claims of the JWT bearer assertion or of the token exchange's subject token.
    grant_claims: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Federation:
    issuer: str
    subject: str
    audience: str
    fetch_jwks: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class _Client:
    """Duck-typed Authlib client model (the methods Authlib calls for this grant)."""

    client_id: str
    client_secret: str | None = field(repr=False)
    auth_methods: frozenset[str]
    scopes: frozenset[str] | None
    jwks: dict[str, Any] | None = None
    audiences: tuple[str, ...] = ()
    tls_subject_dn: x509.Name | None = None
    tls_san_dns: str | None = None
    tls_cert_sha256: str | None = None
    federation: _Federation | None = None
    grant_types: frozenset[str] = frozenset({"client_credentials"})
    # Token exchange: who issues the subject tokens (iss, and the JWKS to verify them).
    subject_issuer: tuple[str, Callable[[], dict[str, Any]]] | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_grant_type(self, grant_type: str) -> bool:
        # A refresh token is only ever issued by a server that issues them.
        return grant_type in self.grant_types or grant_type == "refresh_token"

    def get_allowed_scope(self, scope: str | None) -> str | None:
        requested = (scope or "").split()
        if self.scopes is not None and not set(requested) <= self.scopes:
            return None  # Authlib answers invalid_scope
        return " ".join(requested)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(ALL_METHODS)


class _CustomGrant(_ClientCredentialsGrant):
    """A provider's own grant: client credentials under another grant_type URI, which also
    wants an ``account`` parameter."""

    GRANT_TYPE = CUSTOM_GRANT_TYPE

    def validate_token_request(self) -> None:
        if not self.request.form.get("account"):
            raise InvalidRequestError("Missing 'account' in request")
        super().validate_token_request()
        _grant_record(self.request, None)


def _grant_record(request: Any, claims: dict[str, Any] | None) -> None:
    form = request.form
    request.grant_params = {
        key: form.getlist(key)
        for key in ("audience", "resource", "subject_token_type", "requested_token_type", "account")
        if key in form
    }
    request.grant_claims = claims


def _authenticate_post(query_client: Any, request: Any) -> Any:
    # Authlib's own check, but only for a real form body: a JSON body is another method.
    if flask_request.environ.get(_JSON_MARKER):
        return None
    return authenticate_client_secret_post(query_client, request)


def _authenticate_json(query_client: Any, request: Any) -> Any:
    if not flask_request.environ.get(_JSON_MARKER):
        return None
    return authenticate_client_secret_post(query_client, request)


@dataclass(frozen=True)
class _RefreshToken:
    """What Authlib's RefreshTokenGrant asks of a stored refresh token."""

    client_id: str
    scope: str

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope


def _issuing_grant(server: TokenServer) -> type[Any]:
    class _IssuingGrant(_ClientCredentialsGrant):
        """Client credentials, with a refresh token when the server issues them (RFC 6749
        section 4.4.3 says it SHOULD NOT; some providers do)."""

        def create_token_response(self) -> Any:
            token = self.generate_token(
                scope=self.request.payload.scope,
                include_refresh_token=server.issue_refresh_tokens,
            )
            self.save_token(token)
            return 200, token, self.TOKEN_RESPONSE_HEADER

    return _IssuingGrant


def _refresh_grant(server: TokenServer) -> type[Any]:
    class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*ALL_METHODS, "none"]
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
            return server._refresh_token(refresh_token)

        def authenticate_user(self, refresh_token: _RefreshToken) -> str:
            return refresh_token.client_id  # no users here: the client itself

        def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
            server._retire(refresh_token)

    return _RefreshTokenGrant


def _bearer_grant(server: TokenServer) -> type[Any]:
    class _JwtBearerGrant(JWTBearerGrant):  # type: ignore[misc]
        """RFC 7523 section 2.1: the assertion is the grant; its iss is the client."""

        def resolve_issuer_client(self, issuer: str) -> Any:
            return server._query_client(issuer)

        def resolve_client_public_key(self, client: _Client) -> Any:
            if client.jwks is None:
                raise InvalidGrantError(description="the client has no registered keys")
            return KeySet.import_key_set(client.jwks)

        def get_audiences(self) -> list[str]:
            return server.token_endpoints

        def authenticate_user(self, subject: str) -> Any:
            return subject  # sub is the client itself, or anyone: no users here

        def has_granted_permission(self, client: _Client, user: Any) -> bool:
            return True

        def validate_token_request(self) -> None:
            super().validate_token_request()
            self.request.auth_method = "none"
            _grant_record(
                self.request,
                dict(
                    jwt.decode(self.request.form["assertion"], options={"verify_signature": False})
                ),
            )

    return _JwtBearerGrant


def _exchange_grant(server: TokenServer) -> type[Any]:
    class _TokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
        """RFC 8693 section 2.1, the part tokensync uses: a JWT subject token for an
        access token."""

        GRANT_TYPE = TOKEN_EXCHANGE_GRANT
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*ALL_METHODS, "none"]

        def validate_token_request(self) -> None:
            client = self.authenticate_token_endpoint_client()
            if not client.check_grant_type(self.GRANT_TYPE):
                raise UnauthorizedClientError("token exchange is not allowed for this client")
            form = self.request.form
            subject_token = form.get("subject_token")
            if not subject_token:
                raise InvalidRequestError("Missing 'subject_token' in request")
            requested = form.get("requested_token_type")
            if requested is not None and requested != TOKEN_TYPE_ACCESS_TOKEN:
                raise InvalidRequestError("unsupported requested_token_type")
            subject_type = form.get("subject_token_type")
            if subject_type == TOKEN_TYPE_ACCESS_TOKEN:
                # Chaining: one of this server's own access tokens, still valid.
                with server._lock:
                    issued = server._issued.get(subject_token)
                if issued is None or not server.verify(subject_token):
                    raise InvalidGrantError(description="unknown or expired subject token")
                claims: dict[str, Any] = {"sub": issued.client_id}
            elif subject_type == TOKEN_TYPE_JWT:
                if client.subject_issuer is None:
                    raise InvalidGrantError(description="no subject issuer registered")
                issuer, fetch_jwks = client.subject_issuer
                claims = _verified_jwt(subject_token, issuer=issuer, jwks=fetch_jwks())
            else:
                raise InvalidRequestError("unsupported subject_token_type")
            self.request.client = client
            self.validate_requested_scope()
            _grant_record(self.request, claims)

        def create_token_response(self) -> Any:
            token = self.generate_token(
                scope=self.request.payload.scope, include_refresh_token=False
            )
            token["issued_token_type"] = TOKEN_TYPE_ACCESS_TOKEN
            self.save_token(token)
            return 200, token, self.TOKEN_RESPONSE_HEADER

    return _TokenExchangeGrant


def _verified_jwt(token: str, *, issuer: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """A subject token's claims, once its signature, iss and exp check out."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidGrantError(description="the subject token is not a JWT") from exc
    allowed = {alg: ASYMMETRIC_ALGS.get(alg, _family(alg)) for alg in FEDERATION_ALGS}
    try:
        keys = _select_keys(jwks, header, allowed)
        _verify_signature(token, keys, header["alg"])
    except InvalidClientError as exc:
        raise InvalidGrantError(description="the subject token's signature") from exc
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    registry = jose_jwt.JWTClaimsRegistry(
        leeway=60, iss={"essential": True, "value": issuer}, exp={"essential": True}
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise InvalidGrantError(description=f"subject token refused: {exc.description}") from exc
    return claims


def _refuse(description: str) -> InvalidClientError:
    return InvalidClientError(description=description)


def cert_sha256(cert: bytes) -> str:
    """Hex SHA-256 thumbprint of a certificate given as PEM or DER."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(cert).hexdigest()


def x5t_s256(cert: bytes) -> str:
    """The JOSE ``x5t#S256`` value (base64url SHA-256 of the DER) of a PEM or DER cert."""
    digest = bytes.fromhex(cert_sha256(cert))
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _normalise_thumbprint(value: str) -> str:
    """Hex (any case, colons allowed) or base64url SHA-256 thumbprint -> lowercase hex."""
    compact = value.replace(":", "").strip()
    if len(compact) == 64:
        return compact.lower()
    return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4)).hex()


def _check_public_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("a JWK set needs a non-empty 'keys' list")
    for key in keys:
        if _PRIVATE_JWK_MEMBERS & set(key):
            raise ValueError(f"not a public key: {sorted(_PRIVATE_JWK_MEMBERS & set(key))}")
        kty, crv = key.get("kty"), key.get("crv")
        if (kty, crv) not in {("RSA", None), ("EC", "P-256"), ("OKP", "Ed25519")}:
            raise ValueError(f"unsupported key type {kty}/{crv}")
    copy: dict[str, Any] = json.loads(json.dumps(jwks))  # a private copy
    return copy


def _select_keys(
    jwks: dict[str, Any], header: dict[str, Any], allowed: dict[str, tuple[str, str | None]]
) -> list[jwt.PyJWK]:
    """The keys that may verify a JWS with this header; invalid_client when none can."""
    alg = header.get("alg")
    if alg not in allowed:
        raise _refuse(f"algorithm {alg!r} is not accepted")
    kty, crv = allowed[alg]
    keys: list[dict[str, Any]] = list(jwks.get("keys", []))
    if "kid" in header:
        keys = [key for key in keys if key.get("kid") == header["kid"]]
        if not keys:
            raise _refuse(f"unknown key id {header['kid']!r}")
    elif "x5t#S256" in header and any("x5t#S256" in key for key in keys):
        keys = [key for key in keys if key.get("x5t#S256") == header["x5t#S256"]]
    usable = [
        key
        for key in keys
        if key.get("kty") == kty
        and (crv is None or key.get("crv") == crv)
        and key.get("alg", alg) == alg
        and key.get("use", "sig") == "sig"
    ]
    if not usable:
        raise _refuse(f"no registered key fits algorithm {alg}")
    return [jwt.PyJWK(key, algorithm=alg) for key in usable]


def _verify_signature(assertion: str, keys: Iterable[Any], alg: str) -> None:
    """Signature only (claims are checked by the caller); invalid_client when no key fits."""
    if alg in HMAC_ALGS:
        # By hand: PyJWT warns on short keys, which this suite's filterwarnings turns into
        # an error, and enforce_hmac_key_length=False must still verify them.
        signing_input, _, signature = assertion.rpartition(".")
        try:
            sent = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except ValueError as exc:
            raise _refuse("assertion signature is not base64url") from exc
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        for key in keys:
            expected = hmac.new(key, signing_input.encode(), digest[alg]).digest()
            if hmac.compare_digest(expected, sent):
                return
        raise _refuse("assertion signature does not verify")
    for key in keys:
        try:
            jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            raise _refuse(f"invalid assertion: {exc}") from exc
        return
    raise _refuse("assertion signature does not verify")


class _ClientAssertion(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client assertion; one instance per method (private_key_jwt, secret_jwt)."""

    def __init__(self, server: TokenServer, method: str) -> None:
        super().__init__(validate_jti=True, leeway=60)
        self.CLIENT_AUTH_METHOD = method
        self._server = server
        self._current = threading.local()  # the client being checked, for get_audiences

    def __call__(self, query_client: Any, request: Any) -> Any:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None
        named = form.get("client_id")
        named_client = query_client(named) if named else None
        if named_client is not None and named_client.federation is not None:
            return None  # an external issuer's token: workload_identity's business
        header, claims = self.extract_assertion(assertion)
        symmetric = header.get("alg") in HMAC_ALGS
        if symmetric != (self.CLIENT_AUTH_METHOD == "client_secret_jwt"):
            return None  # the other JWT method
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise _refuse("assertion has no string 'sub'")
        if named is not None and named != subject:
            raise _refuse("client_id does not match the assertion's 'sub'")
        client = query_client(subject)
        if client is None:
            raise _refuse("The client does not exist on this server.")
        if not client.check_endpoint_auth_method(self.CLIENT_AUTH_METHOD, "token"):
            raise _refuse(f"The client cannot authenticate with {self.CLIENT_AUTH_METHOD}")
        alg = header["alg"]
        if symmetric:
            secret = (client.client_secret or "").encode()
            if self._server.enforce_hmac_key_length and len(secret) < HMAC_ALGS[alg]:
                raise _refuse(f"client secret is too short for {alg} (RFC 7518 section 3.2)")
            keys: list[Any] = [secret]
        else:
            keys = _select_keys(client.jwks or {}, header, ASYMMETRIC_ALGS)
        _verify_signature(assertion, keys, alg)
        lifetime = self._server.max_assertion_lifetime
        if isinstance(claims.get("exp"), int | float) and claims["exp"] > time.time() + lifetime:
            raise _refuse(f"assertion expires more than {lifetime} s ahead")
        self._current.client = client
        try:
            self.verify_claims(claims)  # Authlib: iss, sub, aud, exp, jti
        finally:
            self._current.client = None
        request.client = client
        request.assertion_header = dict(header)
        request.assertion_claims = dict(claims)
        return self.authenticate_client(client)

    def get_audiences(self) -> list[str]:
        client: _Client | None = getattr(self._current, "client", None)
        extra = list(client.audiences) if client is not None else []
        return [*self._server.token_endpoints, *extra]

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        return self._server.remember_jti(str(claims["sub"]), str(jti), claims.get("exp"))


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


class _CertHandler(_QuietHandler):
    """Puts the DER of the TLS client certificate (if any) into the WSGI environ."""

    def make_environ(self) -> Any:
        environ = super().make_environ()
        getpeercert = getattr(self.connection, "getpeercert", None)
        if getpeercert is not None:
            try:
                der = getpeercert(binary_form=True)
            except ValueError:
                der = None
            if der:
                environ[PEER_CERT_ENVIRON] = der
        return environ


def mtls_server_context(server_pair: Any, client_ca_pems: Iterable[bytes]) -> ssl.SSLContext:
    """TLS context for the mTLS port: serves ``server_pair`` (``.cert_pem``/``.key_pem``,
    e.g. localcluster.pki.KeyPair), asks for a client certificate, verifies one when sent
    against ``client_ca_pems`` (CERT_OPTIONAL: no certificate still completes the
    handshake; an untrusted one fails it). Registered self-signed client certificates are
    added to it by the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(cert, "wb") as out:
            out.write(server_pair.cert_pem)
        with open(key, "wb") as out:
            out.write(server_pair.key_pem)
        context.load_cert_chain(cert, key)
    for pem in client_ca_pems:
        context.load_verify_locations(cadata=pem.decode())
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class TokenServer:
    """Authlib authorization server on 127.0.0.1; use as a context manager.

    ``token_format`` is ``"jwt"`` (HS256 with ``exp``) or ``"opaque"``; with
    ``send_expires_in`` false the response omits ``expires_in`` so that clients must fall
    back to the JWT ``exp`` or their default lifetime. ``mtls_context`` (from
    ``mtls_server_context``) adds the RFC 8705 port; ``issuer_path`` and ``discovery``
    publish the metadata document.
    """

    # Longest an assertion may live (exp - now), in seconds.
    max_assertion_lifetime = 600
    # Refuse client_secret_jwt with a secret shorter than the hash (RFC 7518 section 3.2).
    enforce_hmac_key_length = True

    def __init__(
        self,
        *,
        lifetime: int = 3600,
        token_format: Literal["jwt", "opaque"] = "jwt",
        send_expires_in: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        mtls_context: ssl.SSLContext | None = None,
        issuer_path: str = "",
        discovery: Literal["openid", "oauth"] | None = None,
    ) -> None:
        if issuer_path and (not issuer_path.startswith("/") or issuer_path.endswith("/")):
            raise ValueError("issuer_path starts with '/' and does not end with one")
        self.lifetime = lifetime
        self._ssl_context = ssl_context
        self._mtls_context = mtls_context
        self.token_format = token_format
        self.send_expires_in = send_expires_in
        self.issuer_path = issuer_path
        self.discovery = discovery
        self.token_path = f"{issuer_path}{TOKEN_PATH}"
        # Discovery metadata, settable by tests.
        self.wrong_issuer = False
        #: Settable by tests: rewrites each successful answer's JSON, as a provider that
        #: does not answer in RFC 6749's shape would send it (see ``nested_answer``).
        self.reshape: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.auth_methods_supported: list[str] = [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "client_secret_jwt",
            *(MTLS_METHODS if mtls_context else ()),
        ]
        self.auth_signing_algs_supported: list[str] = [*ASYMMETRIC_ALGS, *HMAC_ALGS]
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._issued: dict[str, Issued] = {}
        self._jtis: dict[tuple[str, str], float] = {}
        self._self_signed: set[bytes] = set()
        self._requests = 0
        self._discovery_requests = 0
        # The headers of every request, token endpoint and discovery, as received.
        self._token_headers: list[dict[str, str]] = []
        self._discovery_headers: list[dict[str, str]] = []
        self._key = secrets.token_bytes(32)
        #: Settable by tests: answers of the client credentials grant carry a refresh token.
        self.issue_refresh_tokens = False
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._server: BaseWSGIServer | None = None
        self._mtls_server: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self._app = self._build_app()

    # -- test API ------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("TokenServer is not running")
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_port}"

    @property
    def url(self) -> str:
        """The token endpoint."""
        return f"{self.origin}{self.token_path}"

    @property
    def mtls_url(self) -> str:
        """The token endpoint on the mTLS port (RFC 8705 mtls_endpoint_aliases)."""
        if self._mtls_server is None:
            raise RuntimeError("TokenServer has no mTLS port (pass mtls_context)")
        return f"https://127.0.0.1:{self._mtls_server.server_port}{self.token_path}"

    @property
    def token_endpoints(self) -> list[str]:
        """Every URL of the token endpoint: what an assertion's ``aud`` may name."""
        urls = [self.url]
        if self._mtls_server is not None:
            urls.append(self.mtls_url)
        return urls

    @property
    def issuer_url(self) -> str:
        return f"{self.origin}{self.issuer_path}"

    @property
    def discovery_url(self) -> str:
        """Where the metadata is published (RFC 8414 section 3.1 / OIDC Discovery 4)."""
        if self.discovery == "openid":
            return f"{self.issuer_url}/.well-known/openid-configuration"
        if self.discovery == "oauth":
            return f"{self.origin}/.well-known/oauth-authorization-server{self.issuer_path}"
        raise RuntimeError("TokenServer publishes no discovery document")

    @property
    def discovery_requests(self) -> int:
        """Discovery documents served (requests answered 200 at the well-known URL)."""
        with self._lock:
            return self._discovery_requests

    @property
    def requests(self) -> int:
        """Requests received at the token endpoint, successful or not."""
        with self._lock:
            return self._requests

    @property
    def token_request_headers(self) -> list[dict[str, str]]:
        """The headers of each request at the token endpoint, names in lower case."""
        with self._lock:
            return [dict(h) for h in self._token_headers]

    @property
    def discovery_request_headers(self) -> list[dict[str, str]]:
        """The headers of each request for the discovery document, names in lower case."""
        with self._lock:
            return [dict(h) for h in self._discovery_headers]

    @property
    def issued(self) -> list[Issued]:
        with self._lock:
            return list(self._issued.values())

    def add_client(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        auth_methods: Iterable[str] = SECRET_METHODS,
        scopes: Iterable[str] | None = None,
        jwks: dict[str, Any] | None = None,
        audiences: Iterable[str] | None = None,
        tls_subject_dn: str | None = None,
        tls_san_dns: str | None = None,
        tls_cert_sha256: str | None = None,
        tls_cert_pem: bytes | None = None,
        grant_types: Iterable[str] = ("client_credentials",),
        subject_issuer: tuple[str, Callable[[], dict[str, Any]]] | None = None,
    ) -> None:
        """Register a client; ``scopes=None`` allows any scope.

        ``grant_types`` among :data:`ALL_GRANTS`; ``subject_issuer`` (iss, a JWKS fetcher)
        verifies token exchange subject tokens. ``none`` in ``auth_methods`` lets the client
        exchange tokens without authenticating.

        ``jwks`` (public keys) for private_key_jwt; ``audiences`` are accepted in an
        assertion's ``aud`` besides the token endpoint URLs; ``tls_subject_dn`` or
        ``tls_san_dns`` for tls_client_auth (the DN as RFC 4514 writes it, last RDN first,
        i.e. ``cert.subject.rfc4514_string()``; compared as parsed names, so attribute
        order matters and spacing does not); ``tls_cert_pem`` (the self-signed
        certificate, trusted by the mTLS port from now on) and/or ``tls_cert_sha256`` (hex
        or base64url) for self_signed_tls_client_auth.
        """
        methods = frozenset(auth_methods)
        unknown = methods - {*ALL_METHODS, "none"}
        if unknown:
            raise ValueError(f"unknown auth methods: {sorted(unknown)}")
        if FEDERATED_METHOD in methods:
            raise ValueError("workload_identity clients are added with add_federated_client")
        thumbprint = _normalise_thumbprint(tls_cert_sha256) if tls_cert_sha256 else None
        if tls_cert_pem is not None:
            pem_thumbprint = cert_sha256(tls_cert_pem)
            if thumbprint is not None and thumbprint != pem_thumbprint:
                raise ValueError("tls_cert_sha256 is not the thumbprint of tls_cert_pem")
            thumbprint = pem_thumbprint
        needs = {
            "client_secret_basic": client_secret,
            "client_secret_post": client_secret,
            "client_secret_json": client_secret,
            "client_secret_jwt": client_secret,
            "private_key_jwt": jwks,
            "tls_client_auth": tls_subject_dn or tls_san_dns,
            "self_signed_tls_client_auth": thumbprint,
            "none": client_id,
        }
        missing = sorted(method for method in methods if needs[method] is None)
        if missing:
            raise ValueError(f"missing registration data for {missing}")
        if methods & set(MTLS_METHODS) and self._mtls_context is None:
            raise ValueError("mTLS methods need TokenServer(mtls_context=...)")
        client = _Client(
            client_id=client_id,
            client_secret=client_secret,
            auth_methods=methods,
            scopes=None if scopes is None else frozenset(scopes),
            jwks=None if jwks is None else _check_public_jwks(jwks),
            audiences=tuple(audiences or ()),
            tls_subject_dn=(
                None if tls_subject_dn is None else x509.Name.from_rfc4514_string(tls_subject_dn)
            ),
            tls_san_dns=tls_san_dns,
            tls_cert_sha256=thumbprint,
            grant_types=frozenset(grant_types),
            subject_issuer=subject_issuer,
        )
        if tls_cert_pem is not None:
            self._trust_self_signed(tls_cert_pem)
        with self._lock:
            self._clients[client_id] = client

    def add_federated_client(
        self,
        client_id: str,
        *,
        issuer: str,
        subject: str,
        audience: str,
        fetch_jwks: Callable[[], dict[str, Any]],
        scopes: Iterable[str] | None = None,
    ) -> None:
        """A client that authenticates with a token from an external issuer
        (``workload_identity``); ``fetch_jwks`` is called for every request."""
        client = _Client(
            client_id=client_id,
            client_secret=None,
            auth_methods=frozenset({FEDERATED_METHOD}),
            scopes=None if scopes is None else frozenset(scopes),
            federation=_Federation(issuer, subject, audience, fetch_jwks),
        )
        with self._lock:
            self._clients[client_id] = client

    def set_secret(self, client_id: str, new_secret: str) -> None:
        """Rotate a client's secret; the old one stops working at once."""
        with self._lock:
            current = self._clients[client_id]
            self._clients[client_id] = dataclasses.replace(current, client_secret=new_secret)

    def set_jwks(self, client_id: str, jwks: dict[str, Any]) -> None:
        """Replace a client's registered public keys (key rotation), at once."""
        checked = _check_public_jwks(jwks)
        with self._lock:
            current = self._clients[client_id]
            self._clients[client_id] = dataclasses.replace(current, jwks=checked)

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is refused from now on (invalid_grant)."""
        with self._lock:
            self._refresh_tokens.clear()

    @property
    def live_refresh_tokens(self) -> list[str]:
        with self._lock:
            return list(self._refresh_tokens)

    def _refresh_token(self, value: str) -> _RefreshToken | None:
        with self._lock:
            return self._refresh_tokens.get(value)

    def _retire(self, stored: _RefreshToken) -> None:
        with self._lock:
            for key in [k for k, v in self._refresh_tokens.items() if v is stored]:
                del self._refresh_tokens[key]

    def verify(self, access_token: str) -> bool:
        """Introspection: was this token issued here, and is it still valid?"""
        with self._lock:
            record = self._issued.get(access_token)
        return record is not None and record.expires_at > datetime.now(UTC)

    def remember_jti(self, client_id: str, jti: str, exp: Any) -> bool:
        """False when this client already used ``jti`` (a replay); else remember it."""
        now = time.time()
        with self._lock:
            self._jtis = {key: until for key, until in self._jtis.items() if until > now}
            if (client_id, jti) in self._jtis:
                return False
            until = float(exp) if isinstance(exp, int | float) else now
            # Kept past exp + leeway: an assertion is refused by then anyway.
            self._jtis[client_id, jti] = max(until, now) + 120
            return True

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
        servers = [self._server]
        if self._mtls_context is not None:
            self._mtls_server = make_server(
                "127.0.0.1",
                0,
                self._app,
                threaded=True,
                request_handler=_CertHandler,
                ssl_context=self._mtls_context,
            )
            servers.append(self._mtls_server)
        for index, server in enumerate(servers):
            thread = threading.Thread(
                # A short poll keeps stop() fast: shutdown() waits for the loop's next check.
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"tokenserver-{index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._server, self._mtls_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._server = self._mtls_server = None
        self._threads = []

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
                refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: (
                    self.lifetime if self.send_expires_in else 0
                ),
            ),
        )
        server.register_grant(_issuing_grant(self))
        server.register_grant(_refresh_grant(self))
        server.register_grant(_CustomGrant)
        server.register_grant(_bearer_grant(self))
        server.register_grant(_exchange_grant(self))
        server.register_client_auth_method("client_secret_post", _authenticate_post)
        server.register_client_auth_method("client_secret_json", _authenticate_json)
        for method in JWT_METHODS:
            server.register_client_auth_method(method, _ClientAssertion(self, method))
        server.register_client_auth_method("tls_client_auth", self._authenticate_tls)
        server.register_client_auth_method(
            "self_signed_tls_client_auth", self._authenticate_self_signed
        )
        server.register_client_auth_method(FEDERATED_METHOD, self._authenticate_federated)

        @app.post(self.token_path)
        def token() -> Any:
            with self._lock:
                self._requests += 1
                self._token_headers.append(_lower(flask_request.headers))
            response = server.create_token_response()
            reshape = self.reshape
            if reshape is not None and response.status_code == 200:
                response.set_data(json.dumps(reshape(json.loads(response.get_data()))))
            return response

        @app.get("/.well-known/openid-configuration", defaults={"prefix": ""})
        @app.get("/<path:prefix>/.well-known/openid-configuration")
        def openid_configuration(prefix: str) -> Any:
            if self.discovery != "openid" or f"/{prefix}".rstrip("/") != self.issuer_path:
                return jsonify(error="not_found"), 404
            return self._metadata()

        @app.get("/.well-known/oauth-authorization-server", defaults={"suffix": ""})
        @app.get("/.well-known/oauth-authorization-server/<path:suffix>")
        def oauth_metadata(suffix: str) -> Any:
            if self.discovery != "oauth" or f"/{suffix}".rstrip("/") != self.issuer_path:
                return jsonify(error="not_found"), 404
            return self._metadata()

        return _JsonBodyAsForm(app.wsgi_app)

    def _metadata(self) -> Any:
        with self._lock:
            self._discovery_requests += 1
            self._discovery_headers.append(_lower(flask_request.headers))
        # The same document on both ports: token_endpoint names the plain port and
        # mtls_endpoint_aliases the mTLS one (RFC 8705 section 5).
        document: dict[str, Any] = {
            "issuer": self.issuer_url + ("/not-this-issuer" if self.wrong_issuer else ""),
            "token_endpoint": self.url,
            "token_endpoint_auth_methods_supported": list(self.auth_methods_supported),
            "token_endpoint_auth_signing_alg_values_supported": list(
                self.auth_signing_algs_supported
            ),
            "grant_types_supported": ["client_credentials"],
        }
        if self._mtls_server is not None:
            document["mtls_endpoint_aliases"] = {"token_endpoint": self.mtls_url}
        return jsonify(document)

    def _query_client(self, client_id: str) -> _Client | None:
        with self._lock:
            return self._clients.get(client_id)

    # -- RFC 8705 ------------------------------------------------------------------------

    def _trust_self_signed(self, pem: bytes) -> None:
        if self._mtls_context is None:
            raise ValueError("mTLS methods need TokenServer(mtls_context=...)")
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        with self._lock:
            self._self_signed.add(der)
        self._mtls_context.load_verify_locations(cadata=der)

    def _mtls_client(self, request: Any, method: str) -> tuple[_Client, bytes] | None:
        """The client named in the form, when it uses ``method`` and sent nothing else."""
        form = request.form
        if (
            form.get("client_assertion")
            or form.get("client_secret")
            or "Authorization" in request.headers
        ):
            return None
        client_id = form.get("client_id")
        client = self._query_client(client_id) if client_id else None
        if client is None or method not in client.auth_methods:
            return None
        der = flask_request.environ.get(PEER_CERT_ENVIRON)
        if not der:
            return None  # no certificate: not this method (invalid_client in the end)
        return client, der

    def _authenticate_tls(self, query_client: Any, request: Any) -> Any:
        found = self._mtls_client(request, "tls_client_auth")
        if found is None:
            return None
        client, der = found
        cert = x509.load_der_x509_certificate(der)
        with self._lock:
            self_signed = set(self._self_signed)
        assert self._mtls_context is not None
        anchors = [
            x509.load_der_x509_certificate(anchor)
            for anchor in self._mtls_context.get_ca_certs(binary_form=True)
            if anchor not in self_signed
        ]
        if der in self_signed or not any(_issued_by(cert, ca) for ca in anchors):
            return None  # not PKI-issued: perhaps self_signed_tls_client_auth
        if client.tls_subject_dn is not None and cert.subject == client.tls_subject_dn:
            return self._mtls_accept(request, client, der)
        if client.tls_san_dns is not None:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                names = san.value.get_values_for_type(x509.DNSName)
            except x509.ExtensionNotFound:
                names = []
            if client.tls_san_dns in names:
                return self._mtls_accept(request, client, der)
        raise _refuse("client certificate does not match the registered subject")

    def _authenticate_self_signed(self, query_client: Any, request: Any) -> Any:
        found = self._mtls_client(request, "self_signed_tls_client_auth")
        if found is None:
            return None
        client, der = found
        if hashlib.sha256(der).hexdigest() != client.tls_cert_sha256:
            raise _refuse("client certificate is not the registered one")
        return self._mtls_accept(request, client, der)

    @staticmethod
    def _mtls_accept(request: Any, client: _Client, der: bytes) -> _Client:
        request.client = client
        request.client_cert_sha256 = hashlib.sha256(der).hexdigest()
        return client

    # -- workload identity federation -----------------------------------------------------

    def _authenticate_federated(self, query_client: Any, request: Any) -> Any:
        form = request.form
        assertion = form.get("client_assertion")
        client_id = form.get("client_id")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion or not client_id:
            return None
        client = self._query_client(client_id)
        if client is None or client.federation is None:
            return None
        federation = client.federation
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise _refuse(f"invalid assertion: {exc}") from exc
        allowed = {alg: ASYMMETRIC_ALGS.get(alg, _family(alg)) for alg in FEDERATION_ALGS}
        keys = _select_keys(federation.fetch_jwks(), header, allowed)
        _verify_signature(assertion, keys, header["alg"])
        claims = jwt.decode(assertion, options={"verify_signature": False})
        registry = jose_jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": federation.issuer},
            sub={"essential": True, "value": federation.subject},
            aud={"essential": True, "values": [federation.audience]},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise _refuse(f"assertion refused: {exc.description}") from exc
        request.client = client
        request.assertion_header = dict(header)
        request.assertion_claims = dict(claims)
        return client

    # -- tokens --------------------------------------------------------------------------

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
            auth_method=getattr(request, "auth_method", "none"),
            scope=token.get("scope"),
            issued_at=now,
            expires_at=now + timedelta(seconds=self.lifetime),
            access_token=token["access_token"],
            assertion_header=getattr(request, "assertion_header", None),
            assertion_claims=getattr(request, "assertion_claims", None),
            client_cert_sha256=getattr(request, "client_cert_sha256", None),
            grant_type=str(request.form.get("grant_type") or ""),
            grant_params=getattr(request, "grant_params", {}),
            grant_claims=getattr(request, "grant_claims", None),
        )
        with self._lock:
            self._issued[record.access_token] = record
            if token.get("refresh_token"):
                self._refresh_tokens[token["refresh_token"]] = _RefreshToken(
                    request.client.client_id, token.get("scope") or ""
                )


def nested_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """A standard answer as a non-standard provider shapes it: nested, camelCase, an
    absolute RFC 3339 expiry, the scopes as a list, no token_type.

    Read with responseMapping {accessToken: data.accessToken, expiresAt: data.expiresAt,
    scope: data.grants[0].scopes}.
    """
    expires_at = datetime.now(UTC) + timedelta(seconds=answer["expires_in"])
    return {
        "status": "ok",
        "data": {
            "accessToken": answer["access_token"],
            "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "grants": [{"scopes": (answer.get("scope") or "").split()}],
        },
    }


def _lower(headers: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in headers.items()}


def _family(alg: str) -> tuple[str, str | None]:
    if alg.startswith(("RS", "PS")):
        return ("RSA", None)
    return ("EC", {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg])


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
