"""Where an attempt sends its token request, and through which HTTP client.

The token URL comes from the spec or from the issuer's metadata (discovery, cached); either
way it passes the URL policy before a byte is sent. The client trusts the credential's CA
bundle and carries its TLS client certificate, if it has them, and connects only to
addresses the destination rules allow with the admin's allowance (checked again on the
address it connects to, decision 0037). Raises ``failures.Failure``.
"""

from __future__ import annotations

import dataclasses
import hashlib

import httpx

from tokensync import (
    config,
    discovery,
    failures,
    kube,
    model,
    oauth,
    sources,
    transport,
    urlpolicy,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    request: model.TokenRequest
    http: httpx.AsyncClient
    #: token_endpoint_auth_methods_supported, when discovery said.
    supported: tuple[str, ...] | None = None
    issuer: str | None = None
    #: The trust store's and headers' key in the discovery cache.
    trust: str = ""
    ca_pem: str | None = None


def _cache_key(ca_pem: str | None, headers: tuple[tuple[str, str], ...]) -> str:
    """The discovery cache's key besides the issuer: what can change the document. Headers
    count: a tenant's header (X-Tenant, say) could select another document, which must not
    be served to the credentials of other tenants (decision 0044). A digest: no value kept."""
    digest = hashlib.sha256((ca_pem or "").encode())
    for name, value in headers:
        digest.update(f"\0{name.lower()}\0{value}".encode())
    return digest.hexdigest()


class Endpoints:
    def __init__(
        self,
        *,
        kube_api: kube.Kube,
        http: transport.HttpClients,
        metadata: discovery.MetadataCache,
        settings: config.Config,
    ) -> None:
        self._kube = kube_api
        self._http = http
        self._metadata = metadata
        self._settings = settings
        self._allowance = urlpolicy.Allowance.parse(settings.private_networks)

    def check_url(self, url: str, *, kind: failures.Kind) -> None:
        try:
            urlpolicy.check_token_url(
                url,
                allow_insecure_http=self._settings.allow_insecure_http,
                allowed_hosts=self._settings.allowed_hosts,
                allowance=self._allowance,
            )
        except failures.Failure as exc:
            raise failures.Failure(exc.reason, exc.message, kind=kind) from None

    async def resolve(
        self, namespace: str, spec: model.ClientCredentialSpec, material: model.ClientAuthMaterial
    ) -> Endpoint:
        """The token URL (from the spec, or discovered from the issuer) and its client."""
        ca_pem = await self._ca_bundle(namespace, spec.ca_bundle)
        http = self._client(spec.ca_bundle, ca_pem, material.tls_certificate, material.tls_key)
        if spec.issuer_url is None:
            return Endpoint(request=spec.request, http=http, ca_pem=ca_pem)
        # The document is public: fetched without the client certificate.
        plain = self._client(spec.ca_bundle, ca_pem)
        headers = spec.request.headers
        metadata = await self._metadata.get(
            plain,
            spec.issuer_url,
            trust=_cache_key(ca_pem, headers),
            timeout=self._settings.request_timeout,
            headers=headers,
        )
        token_url = discovery.token_endpoint(
            metadata, client_certificate=bool(material.tls_certificate)
        )
        try:
            self.check_url(token_url, kind=failures.Kind.PERMANENT)
        except failures.Failure:
            self._metadata.invalidate(spec.issuer_url, trust=_cache_key(ca_pem, headers))
            raise
        return Endpoint(
            request=dataclasses.replace(spec.request, token_url=token_url),
            http=http,
            supported=metadata.auth_methods,
            issuer=spec.issuer_url,
            trust=_cache_key(ca_pem, headers),
            ca_pem=ca_pem,
        )

    def forget(self, endpoint: Endpoint) -> None:
        """After a failed token request: the endpoint may have moved, so read the issuer's
        document again next time."""
        if endpoint.issuer is not None:
            self._metadata.invalidate(endpoint.issuer, trust=endpoint.trust)

    async def certificate_refused(
        self, endpoint: Endpoint, material: model.ClientAuthMaterial
    ) -> failures.Failure | None:
        """Tell a refused client certificate from a network failure after a lost connection
        (see transport.handshake_alert): the clearer failure when it is the former."""
        if not (material.tls_certificate and material.tls_key):
            return None
        alert = await transport.handshake_alert(
            endpoint.request.token_url,
            ca_pem=endpoint.ca_pem,
            client_cert_pem=material.tls_certificate,
            client_key_pem=material.tls_key,
            seconds=self._settings.request_timeout,
            allowance=self._allowance,
            egress=self._http.egress,
        )
        if not oauth.is_certificate_alert(alert):
            return None
        return failures.Failure(
            failures.Reason.CLIENT_CERTIFICATE_REJECTED,
            f"the token endpoint refused the TLS client certificate ({alert}; "
            "spec.clientCertificateRef)",
            kind=failures.Kind.PERMANENT,
        )

    async def _ca_bundle(self, namespace: str, ref: model.CABundleRef | None) -> str | None:
        if ref is None:
            return None
        try:
            if ref.kind == "Secret":
                source = await self._kube.read_secret(namespace, ref.name)
                pem = sources.decoded(source, ref.key) if source else None
            else:
                source = await self._kube.read_config_map(namespace, ref.name)
                pem = (source.get("data") or {}).get(ref.key) if source else None
        except failures.ApiError as exc:
            raise failures.from_api_error(exc) from None
        if not pem:
            raise failures.Failure(
                failures.Reason.CA_BUNDLE_NOT_FOUND,
                f"{ref.kind} {ref.name!r} with key {ref.key!r} not found",
                kind=failures.Kind.PERMANENT,
            )
        return str(pem)

    def _client(
        self,
        ref: model.CABundleRef | None,
        ca_pem: str | None,
        cert_pem: str | None = None,
        key_pem: str | None = None,
    ) -> httpx.AsyncClient:
        try:
            return self._http.for_tls(
                ca_pem=ca_pem,
                client_cert_pem=cert_pem,
                client_key_pem=key_pem,
                allowance=self._allowance,
            )
        except transport.BadCABundle as exc:
            where = f"{ref.kind} {ref.name!r}" if ref else "caBundleRef"
            raise failures.Failure(
                failures.Reason.CA_BUNDLE_INVALID, f"{where}: {exc}", kind=failures.Kind.PERMANENT
            ) from None
        except transport.BadClientCertificate as exc:
            raise failures.Failure(
                failures.Reason.CLIENT_CERTIFICATE_INVALID, str(exc), kind=failures.Kind.PERMANENT
            ) from None
