"""Client authentication at the token endpoint: one class per method, as httpx has per scheme.

Each :class:`ClientAuth` says three things about its method: the :class:`Proof` it needs (a
client secret, a private key, a TLS client certificate or a ServiceAccount token), how it
adds that proof to a token request (:meth:`ClientAuth.apply`), and when ``auto`` may try it
(:meth:`ClientAuth.auto`). :data:`STRONGEST_FIRST` orders them for ``auto``; adding a method
is one class and its place in that tuple, and a test fails when a ``model.AuthMethod`` has
no class.

``auto`` tries the strongest first, as README promises, so that the secret itself goes over
the wire only when nothing else works: a ServiceAccount token or a private key (no shared
secret at all), client_secret_jwt (the secret signs and stays home), a client certificate,
and last the secret (Basic, then the form body). A secret sent to a server that would
have taken a signature is a secret exposed for nothing, and costs a rejected request too.

Pure: no I/O, and no kopf, kubernetes or httpx imports (the HTTP client is ``oauth``).
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import enum
import json
import secrets
import urllib.parse
from collections.abc import Collection
from datetime import datetime
from typing import ClassVar

from tokensync import assertion, failures, model


class Proof(enum.Enum):
    """What proves the client's identity; the value names it in error messages."""

    CLIENT_SECRET = "client secret"
    PRIVATE_KEY = "private key"
    CLIENT_CERTIFICATE = "client certificate"
    SERVICE_ACCOUNT_TOKEN = "ServiceAccount token"
    #: The grant proves the client (JWT bearer, token exchange): the client id is enough.
    GRANT = "grant"

    def of(self, material: model.ClientAuthMaterial) -> str | None:
        match self:
            case Proof.GRANT:
                return material.client_id
            case Proof.CLIENT_SECRET:
                return material.client_secret
            case Proof.PRIVATE_KEY:
                return material.private_key
            case Proof.CLIENT_CERTIFICATE:
                return material.tls_certificate
            case Proof.SERVICE_ACCOUNT_TOKEN:
                return material.external_assertion


class Auto(enum.Enum):
    """When ``auto`` tries a method for a given client."""

    #: Whenever the server does not refuse it: it lists it, or publishes no list at all.
    ALWAYS = "always"
    #: Only when the server's metadata lists it.
    LISTED = "listed"
    #: Not for this client (its proof is missing), or never without being configured.
    NEVER = "never"


@dataclasses.dataclass(slots=True)
class Outgoing:
    """A token request being built: the grant's parameters, then the client's proof."""

    request: model.TokenRequest
    material: model.ClientAuthMaterial
    #: When the request is sent: assertions are signed for this moment.
    now: datetime
    # Both may hold the secret or an assertion: never in a repr.
    params: list[tuple[str, str]] = dataclasses.field(repr=False)
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    #: Send the parameters as a JSON object rather than a form (client_secret_json).
    as_json: bool = False

    def encode(self) -> tuple[dict[str, str], bytes]:
        """The headers and body to send."""
        headers = dict(self.headers)
        if not self.as_json:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            return headers, urllib.parse.urlencode(self.params).encode()
        grouped: dict[str, list[str]] = {}
        for key, value in self.params:
            grouped.setdefault(key, []).append(value)
        # A repeated parameter (resource) becomes an array; the others stay strings.
        document = {
            key: values[0] if len(values) == 1 else values for key, values in grouped.items()
        }
        headers["Content-Type"] = "application/json"
        return headers, json.dumps(document).encode()


def _hmac_algorithm(algorithm: str | None) -> bool:
    return algorithm is not None and algorithm.startswith("HS")


class ClientAuth(abc.ABC):
    """One client authentication method (instances hold no state: see :func:`for_method`)."""

    #: The spec's name for it (``spec.authMethod``).
    method: ClassVar[model.AuthMethod]
    #: What proves the client's identity with this method.
    proof: ClassVar[Proof]
    #: When ``auto`` tries it, given its proof.
    auto_when: ClassVar[Auto] = Auto.ALWAYS
    #: A method that looks the same on the wire: ``auto`` skips this one after trying that.
    same_on_wire_as: ClassVar[model.AuthMethod | None] = None

    @property
    def listed_as(self) -> str:
        """Its name in the server's ``token_endpoint_auth_methods_supported``."""
        return self.method.value

    def auto(
        self, material: model.ClientAuthMaterial, *, algorithm: str | None, service_account: bool
    ) -> Auto:
        """When ``auto`` may try this method for this client.

        ``algorithm`` is ``spec.clientAssertion.algorithm``; ``service_account`` says that the
        spec names a ServiceAccount whose token can be minted.
        """
        return self.auto_when if self.proof.of(material) else Auto.NEVER

    def required(self, material: model.ClientAuthMaterial) -> str:
        """The proof, or a permanent ``CredentialsMissing`` when the spec provides none."""
        value = self.proof.of(material)
        if not value:
            raise failures.TokenError(
                f"the {self.proof.value} this authentication method needs is missing",
                reason=failures.Reason.CREDENTIALS_MISSING,
                permanent=True,
            )
        return value

    @abc.abstractmethod
    def apply(self, outgoing: Outgoing) -> None:
        """Add the client's proof to ``outgoing``, or raise ``failures.TokenError`` (before
        anything is sent) when the proof is missing or unusable."""


def _form_encode(value: str) -> str:
    # RFC 6749 section 2.3.1 wants the form encoding applied before Basic. quote() with no
    # safe characters differs from quote_plus() only in writing a space as %20, which every
    # decoder reads back as a space, whereas "+" is read back as "+" by servers that merely
    # percent-decode (Authlib among them).
    return urllib.parse.quote(value, safe="")


class ClientSecretBasic(ClientAuth):
    """RFC 6749 section 2.3.1: the client id and secret in an HTTP Basic header."""

    method = model.AuthMethod.CLIENT_SECRET_BASIC
    proof = Proof.CLIENT_SECRET

    def apply(self, outgoing: Outgoing) -> None:
        secret = self.required(outgoing.material)
        pair = f"{_form_encode(outgoing.material.client_id)}:{_form_encode(secret)}"
        outgoing.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()


class ClientSecretPost(ClientAuth):
    """RFC 6749 section 2.3.1: the client id and secret as form parameters."""

    method = model.AuthMethod.CLIENT_SECRET_POST
    proof = Proof.CLIENT_SECRET

    def apply(self, outgoing: Outgoing) -> None:
        secret = self.required(outgoing.material)
        outgoing.params += [
            ("client_id", outgoing.material.client_id),
            ("client_secret", secret),
        ]


class ClientSecretJson(ClientSecretPost):
    """client_secret_post's parameters as a JSON body, for the few servers that want one."""

    method = model.AuthMethod.CLIENT_SECRET_JSON
    # Not a registered method name: no server lists it, and the RFC asks for a form.
    auto_when = Auto.NEVER

    def apply(self, outgoing: Outgoing) -> None:
        super().apply(outgoing)
        outgoing.as_json = True


class _Assertion(ClientAuth):
    """RFC 7521 section 4.2: the proof is a ``client_assertion`` (a JWT)."""

    def apply(self, outgoing: Outgoing) -> None:
        value = self.client_assertion(outgoing)
        # client_id is optional with an assertion; Entra ID needs it for federated
        # credentials, and every server we know accepts it.
        outgoing.params += [
            ("client_id", outgoing.material.client_id),
            ("client_assertion_type", assertion.ASSERTION_TYPE),
            ("client_assertion", value),
        ]

    @abc.abstractmethod
    def client_assertion(self, outgoing: Outgoing) -> str: ...


class WorkloadIdentity(_Assertion):
    """A ServiceAccount token, sent verbatim as the assertion (workload identity federation)."""

    method = model.AuthMethod.WORKLOAD_IDENTITY
    proof = Proof.SERVICE_ACCOUNT_TOKEN

    @property
    def listed_as(self) -> str:
        # A federated ServiceAccount token is a private_key_jwt assertion to the server.
        return model.AuthMethod.PRIVATE_KEY_JWT.value

    def auto(
        self, material: model.ClientAuthMaterial, *, algorithm: str | None, service_account: bool
    ) -> Auto:
        # The operator mints the token only for a method it will try, so the spec's
        # serviceAccountRef is enough to make it a candidate.
        return Auto.ALWAYS if material.external_assertion or service_account else Auto.NEVER

    def client_assertion(self, outgoing: Outgoing) -> str:
        return self.required(outgoing.material)


class _SignedAssertion(_Assertion):
    """RFC 7523 section 2.2: an assertion the operator signs, fresh for each request."""

    def client_assertion(self, outgoing: Outgoing) -> str:
        options = outgoing.request.assertion
        try:
            return assertion.sign(
                self.signing_key(outgoing.material, options=options),
                client_id=outgoing.material.client_id,
                audience=options.audience or outgoing.request.token_url,
                now=outgoing.now,
                lifetime=options.lifetime,
                jti=secrets.token_urlsafe(24),
            )
        except assertion.KeyProblem as exc:
            raise failures.TokenError(str(exc), reason=exc.reason, permanent=True) from None

    @abc.abstractmethod
    def signing_key(
        self, material: model.ClientAuthMaterial, *, options: model.AssertionOptions
    ) -> assertion.SigningKey: ...


class PrivateKeyJwt(_SignedAssertion):
    """An assertion signed with the client's private key (``spec.privateKeyRef``)."""

    method = model.AuthMethod.PRIVATE_KEY_JWT
    proof = Proof.PRIVATE_KEY

    def auto(
        self, material: model.ClientAuthMaterial, *, algorithm: str | None, service_account: bool
    ) -> Auto:
        # An HMAC algorithm in the spec asks for client_secret_jwt instead.
        if _hmac_algorithm(algorithm):
            return Auto.NEVER
        return super().auto(material, algorithm=algorithm, service_account=service_account)

    def signing_key(
        self, material: model.ClientAuthMaterial, *, options: model.AssertionOptions
    ) -> assertion.SigningKey:
        return assertion.load_private_key(
            self.required(material),
            certificate=material.certificate,
            algorithm=options.algorithm,
            key_id=options.key_id,
        )


class ClientSecretJwt(_SignedAssertion):
    """An assertion signed with the client secret as the HMAC key; the secret is not sent."""

    method = model.AuthMethod.CLIENT_SECRET_JWT
    proof = Proof.CLIENT_SECRET

    def auto(
        self, material: model.ClientAuthMaterial, *, algorithm: str | None, service_account: bool
    ) -> Auto:
        if not material.client_secret:
            return Auto.NEVER
        if _hmac_algorithm(algorithm):
            # Asked for by the spec: tried even unlisted, and a short secret is reported.
            return Auto.ALWAYS
        try:
            assertion.hmac_key(material.client_secret, algorithm=None, key_id=None)
        except assertion.KeyProblem:
            # Offered by the server only: a secret too short to sign with must not stop
            # auto (that failure is permanent) before the methods that send it as it is.
            return Auto.NEVER
        # Without a list it is worth a request only where the server says it takes one.
        return Auto.LISTED

    def signing_key(
        self, material: model.ClientAuthMaterial, *, options: model.AssertionOptions
    ) -> assertion.SigningKey:
        return assertion.hmac_key(
            self.required(material), algorithm=options.algorithm, key_id=options.key_id
        )


class TlsClientAuth(ClientAuth):
    """RFC 8705 section 2.1: a CA-issued TLS client certificate; client_id says whose."""

    method = model.AuthMethod.TLS_CLIENT_AUTH
    proof = Proof.CLIENT_CERTIFICATE

    def apply(self, outgoing: Outgoing) -> None:
        # The certificate itself travels in the handshake (the HTTP client holds it).
        self.required(outgoing.material)
        outgoing.params += [("client_id", outgoing.material.client_id)]


class SelfSignedTlsClientAuth(TlsClientAuth):
    """RFC 8705 section 2.2: a self-signed certificate registered with the client."""

    method = model.AuthMethod.SELF_SIGNED_TLS_CLIENT_AUTH
    # Unlisted, the CA-issued kind is tried, and it sends the same request.
    auto_when = Auto.LISTED
    # When the server takes both, one attempt covers both.
    same_on_wire_as = model.AuthMethod.TLS_CLIENT_AUTH


class NoClientAuth(ClientAuth):
    """RFC 6749 section 3.2.1: an unauthenticated client names itself with client_id.

    Only with a grant that proves the client itself (decision 0047); ``auto`` falls back to
    it when the spec names no other proof of the client (see :func:`candidates`).
    """

    method = model.AuthMethod.NONE
    proof = Proof.GRANT
    auto_when = Auto.NEVER

    def apply(self, outgoing: Outgoing) -> None:
        outgoing.params += [("client_id", outgoing.material.client_id)]


#: Every method, in the order ``auto`` tries them (client_secret_json and none: never).
STRONGEST_FIRST: tuple[ClientAuth, ...] = (
    WorkloadIdentity(),
    PrivateKeyJwt(),
    ClientSecretJwt(),
    TlsClientAuth(),
    SelfSignedTlsClientAuth(),
    ClientSecretBasic(),
    ClientSecretPost(),
    ClientSecretJson(),
    NoClientAuth(),
)
_BY_METHOD = {auth.method: auth for auth in STRONGEST_FIRST}


def for_method(method: model.AuthMethod) -> ClientAuth:
    """The :class:`ClientAuth` of a concrete method (``auto`` is none: see :func:`candidates`)."""
    try:
        return _BY_METHOD[method]
    except KeyError:
        raise ValueError(f"not a concrete authentication method: {method}") from None


def candidates(
    configured: model.AuthMethod,
    material: model.ClientAuthMaterial,
    supported: Collection[str] | None = None,
    *,
    algorithm: str | None = None,
    service_account: bool = False,
    grant_proves_client: bool = False,
) -> list[model.AuthMethod]:
    """The methods to try, in order: the configured one, or what ``auto`` may use.

    ``supported`` is the discovery document's ``token_endpoint_auth_methods_supported``
    (None without discovery, or when the document does not say); only what it lists is
    tried. ``algorithm`` is ``spec.clientAssertion.algorithm``: an HMAC one (HS256/384/512)
    asks for client_secret_jwt instead of private_key_jwt. ``service_account`` says that the
    spec names a ServiceAccount, so that workload_identity is a candidate before its token
    is minted: mint it only when the result holds ``WORKLOAD_IDENTITY``.
    ``grant_proves_client`` (JWT bearer, token exchange): with nothing else to prove the
    client, ``auto`` sends no client authentication (``none``) rather than nothing at all.
    """
    if configured is not model.AuthMethod.AUTO:
        # What the operator asked for: not filtered, not reordered.
        return [configured]
    chosen: list[model.AuthMethod] = []
    for auth in STRONGEST_FIRST:
        when = auth.auto(material, algorithm=algorithm, service_account=service_account)
        if supported is None:
            tried = when is Auto.ALWAYS
        else:
            tried = when is not Auto.NEVER and auth.listed_as in supported
        if tried and auth.same_on_wire_as not in chosen:
            chosen.append(auth.method)
    if not chosen and grant_proves_client:
        chosen.append(model.AuthMethod.NONE)
    return chosen
