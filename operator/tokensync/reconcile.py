"""One credential's cycle: read the client Secret, fetch a token, write the target Secret,
report status, and decide when to come back.

The :class:`Reconciler` also keeps the little that must be remembered between events
(:class:`Credential`): what generation and force-refresh request were last handled, when
the current token expires, which client Secret version it came from. It is initialised
from ``status`` when the operator (re)starts, which is what lets a restarted operator
fetch nothing that is still valid and not due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from tokensync import (
    discovery,
    failures,
    kube,
    metrics,
    model,
    oauth,
    scheduler,
    seen,
    sources,
    status,
    target,
    timing,
    transport,
)

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

#: Lifetime of the ServiceAccount tokens minted for workload identity federation: the
#: shortest the TokenRequest API grants. Each is used for one token request.
SERVICE_ACCOUNT_TOKEN_SECONDS = 600
#: Kubernetes Events posted per second at most, on average and at once (decision 0027).
EVENT_RATE = 10.0
EVENT_BURST = 100


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    allow_insecure_http: bool = False
    allowed_hosts: frozenset[str] | None = None
    request_timeout: float = 10.0


@dataclasses.dataclass(slots=True)
class Credential:
    """What the operator remembers about one ClientCredential between events."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    refresh_request: str | None
    handled_generation: int | None = None
    handled_request: str | None = None
    expires_at: datetime.datetime | None = None
    next_refresh_at: datetime.datetime | None = None
    not_before: datetime.datetime | None = None
    client_secret_version: str | None = None
    auth_method: str | None = None
    failed_attempts: int = 0
    failure_reason: str | None = None
    conditions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    target_name: str | None = None
    target_uid: str | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def involved(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets holding the client's credentials, in the order of their versions.

        Read from the raw spec (it may not parse): the same order as
        ``model.ClientCredentialSpec.secret_names``.
        """
        names = []
        for field in ("clientSecretRef", "privateKeyRef", "clientCertificateRef"):
            ref = self.spec.get(field)
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if isinstance(name, str) and name:
                names.append(name)
        return tuple(dict.fromkeys(names))

    def has_secret_version(self, name: str, version: str) -> bool:
        """Did the last attempt read this version of the Secret ``name``?

        ``client_secret_version`` holds one resourceVersion per Secret in
        :attr:`secret_names` order, joined by commas (just the one with one Secret).
        """
        names = self.secret_names
        versions = (self.client_secret_version or "").split(",")
        if name not in names or len(versions) != len(names):
            return False
        return versions[names.index(name)] == version

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Credential:
        meta = body["metadata"]
        st = body.get("status") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec=body.get("spec") or {},
            refresh_request=(meta.get("annotations") or {}).get(model.REFRESH_REQUESTED_ANNOTATION),
            handled_generation=st.get("observedGeneration"),
            handled_request=st.get("handledRefreshRequest"),
            expires_at=model.parse_time(st.get("expiresAt")),
            next_refresh_at=model.parse_time(st.get("nextRefreshAt")),
            client_secret_version=st.get("clientSecretVersion"),
            auth_method=st.get("authMethod"),
            failed_attempts=int(st.get("failedAttempts") or 0),
            failure_reason=st.get("lastFailureReason"),
            conditions=[dict(c) for c in st.get("conditions") or []],
            target_name=st.get("target"),
        )

    def needs_refresh_now(self) -> bool:
        """A new spec generation or an unhandled force-refresh request."""
        if self.generation != self.handled_generation:
            return True
        return bool(self.refresh_request) and self.refresh_request != self.handled_request


class Reconciler:
    def __init__(
        self,
        *,
        kube_api: kube.Kube,
        http: transport.HttpClients,
        metrics_: metrics.Metrics,
        queue: scheduler.RefreshQueue[Key],
        pacer: scheduler.HostPacer,
        settings: Settings,
        clock: Callable[[], datetime.datetime] = utcnow,
        draw: Callable[[], float] = random.random,
        metadata: discovery.MetadataCache | None = None,
        seen_secrets: seen.SeenSecrets | None = None,
        events: scheduler.Budget | None = None,
    ) -> None:
        self._kube = kube_api
        self._http = http
        self._metrics = metrics_
        self._queue = queue
        self._pacer = pacer
        self._settings = settings
        self._clock = clock
        self._draw = draw
        self._metadata = metadata or discovery.MetadataCache()
        self._seen = seen_secrets if seen_secrets is not None else seen.SeenSecrets()
        self._events = events or scheduler.Budget(rate=EVENT_RATE, burst=EVENT_BURST)
        self._credentials: dict[Key, Credential] = {}
        self._by_client_secret: dict[Key, set[Key]] = {}
        # Client Secret versions seen while their credential was being refreshed: checked
        # when that refresh ends, against the version it actually read (see refresh()).
        self._seen_while_running: dict[Key, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._credentials)

    # -- events ----------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A ClientCredential was listed, added or modified."""
        fresh = Credential.from_body(body)
        cred = self._credentials.get(fresh.key)
        if cred is None or cred.uid != fresh.uid:
            cred = fresh
            self._credentials[cred.key] = cred
        else:
            self._unindex(cred)
            cred.generation = fresh.generation
            cred.spec = fresh.spec
            cred.refresh_request = fresh.refresh_request
        self._index(cred)
        if cred.needs_refresh_now():
            self._queue.trigger(cred.key)
        elif not self._queue.is_known(cred.key):
            due = cred.next_refresh_at or self._clock()
            self._queue.schedule(cred.key, at=due.timestamp())

    def forget(self, namespace: str, name: str) -> None:
        """A ClientCredential was deleted: stop refreshing it."""
        cred = self._credentials.pop((namespace, name), None)
        self._seen_while_running.pop((namespace, name), None)
        if cred is not None:
            self._unindex(cred)
        self._queue.cancel((namespace, name))
        self._metrics.forget(namespace, name)

    def secret_seen(self, body: Mapping[str, Any]) -> None:
        """The watch of opted-in Secrets listed, added or modified one."""
        self._seen.put(body)
        meta = body["metadata"]
        self.client_secret_changed(
            meta["namespace"], meta["name"], str(meta.get("resourceVersion") or "")
        )

    def secret_gone(self, namespace: str, name: str) -> None:
        """An opted-in Secret was deleted or lost its label: read it from the API again."""
        self._seen.drop(namespace, name)

    def client_secret_changed(self, namespace: str, name: str, version: str) -> None:
        """A client Secret was listed, added or modified: refetch with a rotated secret."""
        for key in self._by_client_secret.get((namespace, name), set()).copy():
            cred = self._credentials.get(key)
            if cred is None or cred.has_secret_version(name, version):
                continue
            if self._queue.is_running(key):
                # The refresh in flight may have read this very version (on a cold start the
                # Secrets' list arrives while the first refreshes run): decide when it ends.
                self._seen_while_running.setdefault(key, {})[name] = version
            else:
                self._queue.trigger(key)

    def _index(self, cred: Credential) -> None:
        for name in cred.secret_names:
            ref = (cred.namespace, name)
            self._by_client_secret.setdefault(ref, set()).add(cred.key)

    def _unindex(self, cred: Credential) -> None:
        for name in cred.secret_names:
            ref = (cred.namespace, name)
            keys = self._by_client_secret.get(ref)
            if keys is not None:
                keys.discard(cred.key)
                if not keys:
                    del self._by_client_secret[ref]

    # -- the cycle -------------------------------------------------------------------

    async def refresh(self, key: Key, due: float) -> None:
        """The refresh queue's work: one attempt for one credential."""
        try:
            await self._refresh(key, due)
        finally:
            seen = self._seen_while_running.pop(key, {})
            cred = self._credentials.get(key)
            if cred is not None and any(
                not cred.has_secret_version(name, version) for name, version in seen.items()
            ):
                self._queue.trigger(key)  # running: runs again right after this attempt

    async def _refresh(self, key: Key, due: float) -> None:
        cred = self._credentials.get(key)
        if cred is None:
            return
        now = self._clock()
        self._metrics.lateness.observe(max(0.0, now.timestamp() - due))
        if cred.not_before and now < cred.not_before and not cred.needs_refresh_now():
            # Woken at expiry while the token endpoint asked us to wait (Retry-After).
            await self._mark_expired_if_needed(cred, now)
            self._queue.schedule(key, at=cred.not_before.timestamp())
            return
        attempt = _Attempt(generation=cred.generation, request=cred.refresh_request, now=now)
        try:
            spec = self._parse(cred)
            client = await self._read_credentials(cred, spec, attempt)
            existing = await self._check_target(cred, spec)
            if existing is not None and await self._adopt(cred, attempt, spec, existing):
                return
            endpoint = await self._endpoint(spec, client, await self._ca_bundle(cred, spec))
            if spec.service_account_ref is not None:
                client = dataclasses.replace(
                    client,
                    external_assertion=await self._service_account_token(
                        cred, spec.service_account_ref
                    ),
                )
            result = await self._fetch(cred, spec=spec, client=client, endpoint=endpoint)
            refresh_at = timing.refresh_at(
                issued_at=result.token.issued_at,
                expires_at=result.token.expires_at,
                policy=spec.refresh,
                jitter=self._draw(),
            )
            await self._write_target(cred, self._render(cred, spec, result.token, refresh_at))
        except failures.Failure as failure:
            if self._credentials.get(key) is cred:
                await self._record_failure(cred, attempt, failure)
            return
        if self._credentials.get(key) is not cred:
            return  # deleted while we worked; its Secret goes with it (ownerReference)
        await self._succeed(cred, attempt, spec=spec, result=result, refresh_at=refresh_at)

    # -- the steps; each raises _Failure ---------------------------------------------

    def _parse(self, cred: Credential) -> model.ClientCredentialSpec:
        try:
            spec = model.parse_spec(cred.spec, name=cred.name)
        except model.SpecError as exc:
            raise failures.Failure(status.INVALID_SPEC, str(exc), kind=failures.Kind.SPEC) from None
        self._check_url(spec.issuer_url or spec.request.token_url, kind=failures.Kind.SPEC)
        return spec

    def _check_url(self, url: str, *, kind: failures.Kind) -> None:
        try:
            oauth.check_token_url(
                url,
                allow_insecure_http=self._settings.allow_insecure_http,
                allowed_hosts=self._settings.allowed_hosts,
            )
        except failures.TokenError as exc:
            raise failures.Failure(exc.reason, str(exc), kind=kind) from None

    async def _read_credentials(
        self, cred: Credential, spec: model.ClientCredentialSpec, attempt: _Attempt
    ) -> model.ClientAuthMaterial:
        """Read every Secret holding client credentials (each once) and collect them.

        A Secret the watch delivered shortly before is used as delivered (decision 0025).
        """
        found: dict[str, dict[str, Any] | None] = {}
        versions = []
        try:
            for name in spec.secret_names:
                source = self._seen.get(cred.namespace, name)
                if source is None:
                    source = await self._kube.read_secret(cred.namespace, name)
                found[name] = source
                meta = (source or {}).get("metadata") or {}
                versions.append(str(meta.get("resourceVersion") or ""))
        except failures.ApiError as exc:
            raise failures.Failure(
                "KubernetesAPIError", str(exc), kind=failures.Kind.TRANSIENT
            ) from None
        if found and any(found.values()):
            # Remembered even if this attempt fails: only a newer version retriggers it.
            attempt.source_version = ",".join(versions)
        return sources.auth_material(found, spec=spec)

    async def _service_account_token(self, cred: Credential, ref: model.ServiceAccountRef) -> str:
        """A fresh ServiceAccount token for workload identity federation, if the account
        opted in to this audience; tokensync mints none for accounts that did not."""
        try:
            account = await self._kube.read_service_account(cred.namespace, ref.name)
            if account is None:
                raise failures.Failure(
                    "ServiceAccountNotFound",
                    f"ServiceAccount {ref.name!r} not found",
                    kind=failures.Kind.PERMANENT,
                )
            if not sources.service_account_allows(account, ref.audience):
                raise failures.Failure(
                    "ServiceAccountNotOptedIn",
                    f"ServiceAccount {ref.name!r} does not list the audience "
                    f"{ref.audience!r} in its annotation {model.TOKEN_AUDIENCES_ANNOTATION}",
                    kind=failures.Kind.PERMANENT,
                )
            return await self._kube.create_token(
                cred.namespace,
                ref.name,
                audience=ref.audience,
                seconds=SERVICE_ACCOUNT_TOKEN_SECONDS,
            )
        except failures.ApiError as exc:
            if exc.status == 403:
                raise failures.Failure(
                    "ServiceAccountTokenForbidden",
                    "the operator may not read ServiceAccounts or create their tokens: its "
                    "RBAC lacks the workload identity rules (deploy/base/rbac.yaml)",
                    kind=failures.Kind.PERMANENT,
                ) from None
            raise failures.Failure(
                "KubernetesAPIError", str(exc), kind=failures.Kind.TRANSIENT
            ) from None

    async def _ca_bundle(self, cred: Credential, spec: model.ClientCredentialSpec) -> str | None:
        ref = spec.ca_bundle
        if ref is None:
            return None
        try:
            if ref.kind == "Secret":
                source = await self._kube.read_secret(cred.namespace, ref.name)
                pem = sources.decoded(source, ref.key) if source else None
            else:
                source = await self._kube.read_config_map(cred.namespace, ref.name)
                pem = (source.get("data") or {}).get(ref.key) if source else None
        except failures.ApiError as exc:
            raise failures.Failure(
                "KubernetesAPIError", str(exc), kind=failures.Kind.TRANSIENT
            ) from None
        if not pem:
            raise failures.Failure(
                "CABundleNotFound",
                f"{ref.kind} {ref.name!r} with key {ref.key!r} not found",
                kind=failures.Kind.PERMANENT,
            )
        return str(pem)

    def _client_for(
        self,
        ref: model.CABundleRef | None,
        ca_pem: str | None,
        cert_pem: str | None = None,
        key_pem: str | None = None,
    ) -> httpx.AsyncClient:
        try:
            return self._http.for_tls(
                ca_pem=ca_pem, client_cert_pem=cert_pem, client_key_pem=key_pem
            )
        except transport.BadCABundle as exc:
            where = f"{ref.kind} {ref.name!r}" if ref else "caBundleRef"
            raise failures.Failure(
                "CABundleInvalid", f"{where}: {exc}", kind=failures.Kind.PERMANENT
            ) from None
        except transport.BadClientCertificate as exc:
            raise failures.Failure(
                "ClientCertificateInvalid", str(exc), kind=failures.Kind.PERMANENT
            ) from None

    async def _endpoint(
        self, spec: model.ClientCredentialSpec, client: model.ClientAuthMaterial, ca_pem: str | None
    ) -> _Endpoint:
        """The token URL (from the spec, or discovered from the issuer) and its client."""
        http = self._client_for(spec.ca_bundle, ca_pem, client.tls_certificate, client.tls_key)
        if spec.issuer_url is None:
            return _Endpoint(request=spec.request, http=http, ca_pem=ca_pem)
        # The document is public: fetched without the client certificate.
        plain = self._client_for(spec.ca_bundle, ca_pem)
        trust = hashlib.sha256((ca_pem or "").encode()).hexdigest()
        try:
            metadata = await self._metadata.get(
                plain, spec.issuer_url, trust=trust, timeout=self._settings.request_timeout
            )
        except failures.TokenError as exc:
            kind = failures.Kind.PERMANENT if exc.permanent else failures.Kind.TRANSIENT
            raise failures.Failure(exc.reason, str(exc), kind=kind) from None
        token_url = metadata.token_endpoint
        if client.tls_certificate and metadata.mtls_token_endpoint:
            token_url = metadata.mtls_token_endpoint  # RFC 8705 section 5
        try:
            self._check_url(token_url, kind=failures.Kind.PERMANENT)
        except failures.Failure:
            self._metadata.invalidate(spec.issuer_url, trust=trust)
            raise
        return _Endpoint(
            request=dataclasses.replace(spec.request, token_url=token_url),
            http=http,
            supported=metadata.auth_methods,
            issuer=spec.issuer_url,
            trust=trust,
            ca_pem=ca_pem,
        )

    async def _check_target(
        self, cred: Credential, spec: model.ClientCredentialSpec
    ) -> dict[str, Any] | None:
        """Refuse a foreign target before asking the provider for a token we cannot store.

        Returns the target Secret when it was read (the first attempt after a start).
        """
        name = spec.target.name
        if cred.target_uid and cred.target_name == name:
            return None
        try:
            existing = await self._kube.read_secret(cred.namespace, name)
        except failures.ApiError as exc:
            raise failures.Failure(
                "KubernetesAPIError", str(exc), kind=failures.Kind.TRANSIENT
            ) from None
        if existing is None:
            return None
        if not target.owned_by(existing, credential_uid=cred.uid):
            raise target.conflict(name)
        cred.target_name, cred.target_uid = name, existing["metadata"]["uid"]
        return existing

    async def _adopt(
        self,
        cred: Credential,
        attempt: _Attempt,
        spec: model.ClientCredentialSpec,
        existing: dict[str, Any],
    ) -> bool:
        """Take over a token our Secret holds but status does not know, instead of refetching.

        The Secret is written before status: an operator stopped between the two writes
        leaves status one token behind. The Secret's own annotations say when its token
        expires and is due; if it is newer than status and not due, status catches up.
        """
        if cred.needs_refresh_now():
            return False
        found = target.token_times(existing)
        now = self._clock()
        if found is None:
            return False
        issued_at, expires_at, refresh_at = found
        if cred.expires_at is not None and expires_at <= cred.expires_at:
            return False  # status is not behind the Secret
        if refresh_at <= now or expires_at <= now:
            return False  # due anyway
        cred.conditions = status.set_condition(
            cred.conditions,
            type_=status.READY,
            status=True,
            reason=status.TOKEN_ISSUED,
            message=f"token valid until {model.format_time(expires_at)}",
            generation=attempt.generation,
            now=now,
        )
        cred.handled_generation = attempt.generation
        cred.handled_request = attempt.request
        cred.expires_at, cred.next_refresh_at, cred.not_before = expires_at, refresh_at, None
        cred.client_secret_version = attempt.source_version
        cred.failed_attempts, cred.failure_reason = 0, None
        self._queue.schedule(cred.key, at=refresh_at.timestamp())
        await self._patch_status(
            cred,
            {
                "conditions": cred.conditions,
                "observedGeneration": attempt.generation,
                "handledRefreshRequest": attempt.request,
                **status.times(
                    expiresAt=expires_at, lastRefreshAt=issued_at, nextRefreshAt=refresh_at
                ),
                "failedAttempts": 0,
                "lastFailureReason": None,
                "target": spec.target.name,
                "clientSecretVersion": attempt.source_version,
            },
        )
        self._metrics.expiration.labels(cred.namespace, cred.name).set(expires_at.timestamp())
        self._metrics.renewal.labels(cred.namespace, cred.name).set(refresh_at.timestamp())
        self._metrics.set_ready(cred.namespace, cred.name, "True")
        logger.info(
            "adopted the token in %s/%s (status was behind the Secret), next refresh at %s",
            cred.namespace,
            spec.target.name,
            model.format_time(refresh_at),
        )
        return True

    async def _fetch(
        self,
        cred: Credential,
        *,
        spec: model.ClientCredentialSpec,
        client: model.ClientAuthMaterial,
        endpoint: _Endpoint,
    ) -> oauth.FetchResult:
        request = endpoint.request
        host = urllib.parse.urlsplit(request.token_url).hostname or ""
        methods = oauth.candidate_methods(
            request.auth_method,
            client,
            endpoint.supported,
            algorithm=request.assertion.algorithm,
        )
        remembered = _remembered_method(spec, cred.auth_method)
        if remembered in methods:
            # With `auto`, start with what worked last time; if the server now refuses it,
            # the others are tried, each once.
            methods = [remembered, *(m for m in methods if m is not remembered)]
        watchdog = self._expiry_watchdog(cred)
        started: float | None = None  # when the request leaves, after the host's slot
        try:
            async with self._pacer.slot(host):
                started = time.monotonic()
                result = await oauth.fetch_token(
                    endpoint.http,
                    request=request,
                    credentials=client,
                    default_lifetime=spec.refresh.default_lifetime,
                    now=self._clock,
                    timeout=self._settings.request_timeout,
                    methods=methods,
                )
        except failures.TokenError as exc:
            self._metrics.requests.labels("error", exc.reason).inc()
            if endpoint.issuer is not None:
                # The endpoint may have moved: read the issuer's document again next time.
                self._metadata.invalidate(endpoint.issuer, trust=endpoint.trust)
            kind = failures.Kind.PERMANENT if exc.permanent else failures.Kind.TRANSIENT
            failure = failures.Failure(exc.reason, str(exc), kind=kind, retry_after=exc.retry_after)
            if exc.reason == "ConnectionFailed" and client.tls_certificate and client.tls_key:
                refused = await self._certificate_refused(
                    request.token_url, endpoint.ca_pem, client.tls_certificate, client.tls_key
                )
                failure = refused or failure
            raise failure from None
        finally:
            if started is not None:
                self._metrics.duration.observe(time.monotonic() - started)
            if watchdog is not None:
                watchdog.cancel()
        self._metrics.requests.labels("success", "").inc()
        return result

    async def _certificate_refused(
        self, url: str, ca_pem: str | None, cert_pem: str, key_pem: str
    ) -> failures.Failure | None:
        """Tell a refused client certificate from a network failure after a lost connection
        (see transport.handshake_alert): the clearer failure when it is the former."""
        alert = await transport.handshake_alert(
            url,
            ca_pem=ca_pem,
            client_cert_pem=cert_pem,
            client_key_pem=key_pem,
            seconds=self._settings.request_timeout,
        )
        if not oauth.is_certificate_alert(alert):
            return None
        return failures.Failure(
            "ClientCertificateRejected",
            f"the token endpoint refused the TLS client certificate ({alert}; "
            "spec.clientCertificateRef)",
            kind=failures.Kind.PERMANENT,
        )

    def _expiry_watchdog(self, cred: Credential) -> asyncio.Task[None] | None:
        """Report expiry on time even while a token request is still in flight."""
        if cred.expires_at is None:
            return None
        delay = (cred.expires_at - self._clock()).total_seconds()
        if delay <= 0 or delay > self._settings.request_timeout + 1:
            return None  # expired already (the attempt's outcome reports it) or far away

        async def report_at_expiry() -> None:
            await asyncio.sleep(delay)
            await self._mark_expired_if_needed(cred, self._clock(), message="refresh in progress")

        return asyncio.create_task(report_at_expiry())

    def _render(
        self,
        cred: Credential,
        spec: model.ClientCredentialSpec,
        token: oauth.Token,
        refresh_at: datetime.datetime,
    ) -> dict[str, Any]:
        return target.render_target(
            namespace=cred.namespace,
            credential=cred.name,
            credential_uid=cred.uid,
            target=spec.target,
            access_token=token.access_token,
            token_type=token.token_type,
            expires_at=token.expires_at,
            scope=token.scope,
            issued_at=token.issued_at,
            refresh_at=refresh_at,
        )

    async def _write_target(self, cred: Credential, body: dict[str, Any]) -> None:
        """Write the whole target Secret in one request, refusing Secrets we do not own."""
        try:
            await self._write_target_once(cred, body)
        except failures.ApiError as exc:
            raise failures.Failure(
                "TargetWriteFailed", str(exc), kind=failures.Kind.TRANSIENT
            ) from None

    async def _write_target_once(self, cred: Credential, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if cred.target_uid and cred.target_name == name:
            try:
                await self._patch_target(cred, body, uid=cred.target_uid)
            except failures.ApiError as exc:
                # 404: deleted. 422 "metadata.uid: field is immutable": deleted and replaced
                # by another Secret of the same name. Either way, start over and check.
                if exc.status not in (404, 409, 422):
                    raise
                cred.target_uid = None
            else:
                return
        try:
            created = await self._kube.create_secret(cred.namespace, target.for_create(body))
        except failures.ApiError as exc:
            if exc.status != 409:
                raise
        else:
            cred.target_name, cred.target_uid = name, created["metadata"]["uid"]
            return
        existing = await self._kube.read_secret(cred.namespace, name)
        if existing is None or not target.owned_by(existing, credential_uid=cred.uid):
            raise target.conflict(name)
        await self._patch_target(cred, body, uid=existing["metadata"]["uid"])

    async def _patch_target(self, cred: Credential, body: dict[str, Any], *, uid: str) -> None:
        # The uid makes the patch conditional: if the Secret was deleted and someone else
        # created one with the same name, the API server refuses to change its uid (422).
        patch = {**body, "metadata": {**body["metadata"], "uid": uid}}
        await self._kube.patch_secret(cred.namespace, body["metadata"]["name"], patch)
        cred.target_name, cred.target_uid = body["metadata"]["name"], uid

    # -- outcomes --------------------------------------------------------------------

    async def _succeed(
        self,
        cred: Credential,
        attempt: _Attempt,
        *,
        spec: model.ClientCredentialSpec,
        result: oauth.FetchResult,
        refresh_at: datetime.datetime,
    ) -> None:
        token = result.token
        now = self._clock()
        message = f"token valid until {model.format_time(token.expires_at)}"
        if timing.short_lifetime_warning(lifetime=token.lifetime, policy=spec.refresh):
            message += (
                "; warning: the token lifetime leaves pods less than the kubelet sync period "
                "(about a minute) to see a refreshed Secret"
            )
        first_issue = cred.expires_at is None
        recovered = cred.failure_reason is not None
        cred.conditions = status.set_condition(
            cred.conditions,
            type_=status.READY,
            status=True,
            reason=status.TOKEN_ISSUED,
            message=message,
            generation=attempt.generation,
            now=now,
        )
        cred.handled_generation = attempt.generation
        cred.handled_request = attempt.request
        cred.expires_at = token.expires_at
        cred.next_refresh_at = refresh_at
        cred.not_before = None
        cred.client_secret_version = attempt.source_version
        cred.auth_method = result.auth_method.value
        cred.failed_attempts = 0
        cred.failure_reason = None
        self._queue.schedule(cred.key, at=refresh_at.timestamp())
        await self._patch_status(
            cred,
            {
                "conditions": cred.conditions,
                "observedGeneration": attempt.generation,
                "handledRefreshRequest": attempt.request,
                **status.times(
                    expiresAt=token.expires_at,
                    lastRefreshAt=token.issued_at,
                    nextRefreshAt=refresh_at,
                ),
                "authMethod": cred.auth_method,
                "failedAttempts": 0,
                "lastFailureReason": None,
                "target": spec.target.name,
                "clientSecretVersion": attempt.source_version,
                "tokenType": token.token_type,
                "scope": token.scope,
            },
        )
        self._metrics.expiration.labels(cred.namespace, cred.name).set(token.expires_at.timestamp())
        self._metrics.renewal.labels(cred.namespace, cred.name).set(refresh_at.timestamp())
        self._metrics.set_ready(cred.namespace, cred.name, "True")
        logger.info(
            "issued a token for %s/%s, valid until %s, next refresh at %s",
            cred.namespace,
            cred.name,
            model.format_time(token.expires_at),
            model.format_time(refresh_at),
        )
        if first_issue:
            await self._event(cred, "Normal", "Issued", message, now)
        elif recovered:
            await self._event(cred, "Normal", "Recovered", f"refresh succeeded; {message}", now)

    async def _record_failure(
        self, cred: Credential, attempt: _Attempt, failure: failures.Failure
    ) -> None:
        if failure.kind is failures.Kind.SPEC:
            await self._fail(cred, attempt, reason=failure.reason, message=failure.message)
            return
        if failure.kind is failures.Kind.PERMANENT:
            await self._fail(
                cred,
                attempt,
                reason=failure.reason,
                message=failure.message,
                retry=timing.PERMANENT_RETRY,
            )
            return
        delay = timing.backoff_delay(
            attempt=cred.failed_attempts + 1,
            base=timing.TRANSIENT_BASE,
            cap=timing.TRANSIENT_CAP,
            draw=self._draw(),
        )
        not_before = None
        if failure.retry_after is not None:
            # Counted from now, after the response arrived, never from the attempt's start.
            not_before = self._clock() + datetime.timedelta(seconds=failure.retry_after)
            delay = max(delay, datetime.timedelta(seconds=failure.retry_after))
        await self._fail(
            cred,
            attempt,
            reason=failure.reason,
            message=failure.message,
            retry=delay,
            transient=True,
            not_before=not_before,
        )

    async def _fail(
        self,
        cred: Credential,
        attempt: _Attempt,
        *,
        reason: str,
        message: str,
        retry: datetime.timedelta | None = None,
        transient: bool = False,
        not_before: datetime.datetime | None = None,
    ) -> None:
        """Record a failed attempt. The target Secret is never touched here."""
        now = self._clock()  # not the attempt's start: a request may have taken a while
        cred.failed_attempts += 1
        valid = cred.expires_at is not None and cred.expires_at > now
        retry_at = now + retry if retry is not None else None
        if transient and valid and cred.expires_at is not None:
            ready, ready_reason = True, status.REFRESH_FAILING
            ready_message = (
                f"current token valid until {model.format_time(cred.expires_at)}; "
                f"refresh failed ({reason}: {message})"
            )
            if retry_at is not None:
                # Backoff grows past what a valid token can wait for: keep at least one more
                # try before expiry, so a provider that comes back in time is used in time.
                remaining = cred.expires_at - now
                retry_at = min(retry_at, now + max(remaining / 2, _MIN_RETRY))
        elif transient and cred.expires_at is not None:
            ready, ready_reason = False, status.EXPIRED
            ready_message = (
                f"token expired at {model.format_time(cred.expires_at)}; "
                f"refresh failed ({reason}: {message})"
            )
        else:
            ready, ready_reason, ready_message = False, reason, message
        if retry_at is not None:
            ready_message += f"; next attempt at {model.format_time(retry_at)}"
        previous = status.ready_condition(cred.conditions)
        newly_expired = ready_reason == status.EXPIRED and (
            previous is None or previous.get("reason") != status.EXPIRED
        )
        cred.conditions = status.set_condition(
            cred.conditions,
            type_=status.READY,
            status=ready,
            reason=ready_reason,
            message=ready_message,
            generation=attempt.generation,
            now=now,
        )
        cred.handled_generation = attempt.generation
        cred.handled_request = attempt.request
        cred.next_refresh_at = retry_at
        cred.not_before = not_before
        if attempt.source_version is not None:
            cred.client_secret_version = attempt.source_version
        new_reason = cred.failure_reason != reason
        cred.failure_reason = reason
        if retry_at is not None:
            self._queue.schedule(cred.key, at=retry_at.timestamp())
        else:
            self._queue.cancel(cred.key)  # only a change to the spec can help
        await self._patch_status(
            cred,
            {
                "conditions": cred.conditions,
                "observedGeneration": attempt.generation,
                "handledRefreshRequest": attempt.request,
                "failedAttempts": cred.failed_attempts,
                "lastFailureReason": reason,
                "clientSecretVersion": cred.client_secret_version,
                **status.times(nextRefreshAt=retry_at),
            },
        )
        self._metrics.set_ready(cred.namespace, cred.name, "True" if ready else "False")
        logger.warning(
            "refresh of %s/%s failed (%s): %s", cred.namespace, cred.name, reason, message
        )
        if new_reason:
            await self._event(cred, "Warning", reason, f"refresh failed: {message}", now)
        if newly_expired:
            await self._event(cred, "Warning", status.EXPIRED, ready_message, now)

    async def _mark_expired_if_needed(
        self,
        cred: Credential,
        now: datetime.datetime,
        *,
        message: str = "the token endpoint asked to wait before retrying",
    ) -> None:
        if cred.expires_at is None or cred.expires_at > now:
            return
        ready = status.ready_condition(cred.conditions)
        if ready is not None and ready.get("reason") == status.EXPIRED:
            return
        cred.conditions = status.set_condition(
            cred.conditions,
            type_=status.READY,
            status=False,
            reason=status.EXPIRED,
            message=f"token expired at {model.format_time(cred.expires_at)}; {message}",
            generation=cred.handled_generation or cred.generation,
            now=now,
        )
        await self._patch_status(cred, {"conditions": cred.conditions})
        self._metrics.set_ready(cred.namespace, cred.name, "False")
        await self._event(cred, "Warning", status.EXPIRED, str(cred.conditions[-1]["message"]), now)

    async def _patch_status(self, cred: Credential, patch: Mapping[str, Any]) -> None:
        try:
            await self._kube.patch_status(cred.namespace, cred.name, patch)
        except failures.ApiError as exc:
            # The token is safe in its Secret; status is rewritten on the next cycle.
            logger.warning("status of %s/%s not updated: %s", cred.namespace, cred.name, exc)

    async def _event(
        self, cred: Credential, type_: str, reason: str, message: str, now: datetime.datetime
    ) -> None:
        if not self._events.take():
            # Events are best effort: status holds the same news (decision 0027).
            self._metrics.events_dropped.inc()
            return
        try:
            await self._kube.post_event(
                involved=cred.involved, type_=type_, reason=reason, message=message, now=now
            )
        except failures.ApiError as exc:
            logger.warning("event for %s/%s not posted: %s", cred.namespace, cred.name, exc)


@dataclasses.dataclass(slots=True)
class _Attempt:
    """What one attempt acts on, captured at its start (the spec may change meanwhile)."""

    generation: int
    request: str | None
    now: datetime.datetime
    source_version: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where this attempt sends its token request, and through which client."""

    request: model.TokenRequest
    http: httpx.AsyncClient
    #: token_endpoint_auth_methods_supported, when discovery said.
    supported: tuple[str, ...] | None = None
    issuer: str | None = None
    trust: str = ""
    ca_pem: str | None = None


_MIN_RETRY = datetime.timedelta(seconds=1)


def _remembered_method(
    spec: model.ClientCredentialSpec, remembered: str | None
) -> model.AuthMethod | None:
    """With ``auto``, start with the method that worked last time (from status)."""
    if spec.request.auth_method is not model.AuthMethod.AUTO or not remembered:
        return None
    try:
        method = model.AuthMethod(remembered)
    except ValueError:
        return None
    return None if method is model.AuthMethod.AUTO else method
