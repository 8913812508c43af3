"""One attempt's I/O: read the client's proof, find the endpoint, fetch, write the target.

:meth:`Attempts.run` is the pipeline. Each step returns a value or raises a
``failures.Failure``; the run returns what came of it (``progress.Issued``,
``progress.Adopted``, or the failure) and decides nothing about retries or status:
``outcome`` does.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from tokensync import (
    clientauth,
    config,
    destinations,
    endpoint,
    failures,
    grants,
    kube,
    metrics,
    model,
    oauth,
    parsing,
    possession,
    progress,
    provenance,
    responses,
    scheduler,
    seen,
    shape,
    sources,
    target,
    timing,
    tracking,
    writer,
)

#: Lifetime of the ServiceAccount tokens minted for workload identity federation: the
#: shortest the TokenRequest API grants. Each is used for one token request.
SERVICE_ACCOUNT_TOKEN_SECONDS = 600


class HandedOver(Exception):
    """The credential's shard was handed over while its attempt waited for the host's pace:
    no token was asked for, nothing is decided or written (decision 0050)."""


class Attempts:
    def __init__(
        self,
        *,
        kube_api: kube.Kube,
        endpoints: endpoint.Endpoints,
        targets: writer.TargetWriter,
        metrics_: metrics.Metrics,
        pacer: scheduler.HostPacer,
        seen_secrets: seen.SeenSecrets,
        settings: config.Config,
        clock: Callable[[], datetime.datetime],
        draw: Callable[[], float],
        serving: Callable[[tracking.Record], bool] = lambda record: True,
    ) -> None:
        #: Does this replica still serve the credential (decision 0050)? Asked once the
        #: host's pace lets the token request go: a hand-over waits for attempts under way,
        #: and one still waiting for its slot need not be waited for.
        self._serving = serving
        self._kube = kube_api
        self._endpoints = endpoints
        self._targets = targets
        self._metrics = metrics_
        self._pacer = pacer
        self._seen = seen_secrets
        self._settings = settings
        self._clock = clock
        self._draw = draw

    async def run(self, record: tracking.Record, attempt: progress.Attempt) -> progress.Result:
        try:
            return await self._run(record, attempt)
        except failures.Failure as failure:
            return failure

    async def _run(self, record: tracking.Record, attempt: progress.Attempt) -> progress.Result:
        spec = parsing.parse_spec(record.spec, name=record.name)
        # A template that cannot render, even with placeholder values, costs no token and
        # leaves the Secret as it is (decision 0040).
        shape.check(spec.target)
        destination = spec.issuer_url or spec.request.token_url
        self._endpoints.check_url(destination, kind=failures.Kind.SPEC)
        material, proofs = await self._material(record.namespace, spec, attempt)
        # Header values from Secrets are read with the proofs: the same opt-in, the same
        # allowed destinations (below), a rotation triggers a refresh (decision 0044).
        request = dataclasses.replace(
            spec.request, headers=sources.header_values(proofs, spec=spec)
        )
        spec = dataclasses.replace(spec, request=request)
        rotated = (attempt.source_version or None) != (record.state.source_version or None)
        requested = record.needs_refresh_now() or rotated or record.replace_asked()
        existing = await self._targets.check(record, spec.target)
        found = target.whole_times(existing) if existing is not None else None
        # The first attempt since this replica took the shard over, and the target holds a
        # newer token than the status its watch delivered: the previous holder's last status
        # write may not have arrived yet. Status is read before anything is decided from it:
        # acting on the lagging view wrote that status again, or, when the new token lived
        # longer than the old one allows, fetched another (decision 0050).
        if (
            record.unconfirmed
            and provenance.ahead_of(record.state, found)
            and await self._confirm(record)
        ):
            rotated = (attempt.source_version or None) != (record.state.source_version or None)
            requested = record.needs_refresh_now() or rotated or record.replace_asked()
        record.unconfirmed = False
        if existing is not None:
            # Read after a start, or after the target watch saw it changed (decision 0035):
            # its annotations are checked against status before they are believed.
            adopted = provenance.adoptable(
                record.state,
                found,
                target=spec.target.name,
                now=self._clock(),
                refresh_requested=requested,
                policy=spec.refresh,
            )
            if adopted is not None:
                return adopted
        wait = provenance.repair_not_before(
            record.state, policy=spec.refresh, now=self._clock(), requested=requested
        )
        if wait is not None:
            return progress.Deferred(until=wait, target=spec.target.name)
        for name, proof in proofs.items():
            self._check_destination(proof, "Secret", name, destination)
        where = await self._endpoints.resolve(record.namespace, spec, material)
        methods = self._methods(spec, where, material, remembered=record.state.auth_method)
        if model.AuthMethod.WORKLOAD_IDENTITY in methods:
            assert spec.service_account_ref is not None  # a candidate only with one
            minted = await self._service_account_token(
                record.namespace, spec.service_account_ref, destination
            )
            material = dataclasses.replace(material, external_assertion=minted)
        result = await self._refreshed(
            record, spec, where, material, methods=methods, proofs=proofs
        )
        if result is None:
            exchange = spec.request.grant.token_exchange
            if exchange is not None and exchange.subject_service_account is not None:
                # The subject token is minted as for workload identity: the same opt-in
                # annotations, the same RBAC, the same destination check (decision 0047).
                subject = await self._service_account_token(
                    record.namespace, exchange.subject_service_account, destination
                )
                material = dataclasses.replace(material, subject_token=subject)
            if exchange is not None and exchange.subject_secret is not None:
                subject = await self._chained_token(
                    record.namespace, exchange.subject_secret, destination
                )
                material = dataclasses.replace(material, subject_token=subject)
            result = await self._fetch(
                where, material, methods=methods, policy=spec.refresh, record=record
            )
        token = result.token
        # Kept before the target is written: a server that rotates refresh tokens has
        # already retired the one just used (decision 0048).
        record.refresh_token, record.refresh_generation = token.refresh_token, record.generation
        refresh_at = timing.refresh_at(
            issued_at=token.issued_at,
            expires_at=token.expires_at,
            policy=spec.refresh,
            jitter=self._draw(),
        )
        # What a consumer's proof is checked against at the refresh endpoint (decision 0043).
        token_id = possession.token_id(token.access_token)
        body = target.render_target(
            namespace=record.namespace,
            credential=record.name,
            credential_uid=record.uid,
            target=spec.target,
            access_token=token.access_token,
            token_type=token.token_type,
            expires_at=token.expires_at,
            scope=token.scope,
            issued_at=token.issued_at,
            refresh_at=refresh_at,
            token_id=token_id,
            refresh_token=token.refresh_token,
            # The keys an earlier shape wrote there, removed unless this one writes them.
            previous=record.target_written if record.target_name == spec.target.name else None,
        )
        newer = await self._targets.write(
            record,
            body,
            policy=spec.target,
            wins=lambda times: provenance.supersedes(
                times,
                issued_at=token.issued_at,
                expires_at=token.expires_at,
                policy=spec.refresh,
                now=self._clock(),
            ),
        )
        if newer is not None:
            # Another writer stored a token as new as this one (decision 0036): this one is
            # dropped, and status follows the Secret.
            issued_at, expires_at, refresh_at = newer
            return progress.Adopted(
                issued_at=issued_at,
                expires_at=expires_at,
                refresh_at=refresh_at,
                target=spec.target.name,
                why="another writer stored a token as new as the one fetched, kept",
            )
        record.holds(token_id)
        record.target_written = target.written(body)
        return progress.Issued(
            issued_at=token.issued_at,
            expires_at=token.expires_at,
            refresh_at=refresh_at,
            token_type=token.token_type,
            scope=token.scope,
            auth_method=result.auth_method.value,
            target=spec.target.name,
            policy=spec.refresh,
            client_secret_key=result.client_secret_key,
            refused_keys=result.refused_keys,
        )

    async def _confirm(self, record: tracking.Record) -> bool:
        """Read the ClientCredential and take its status as the state (Record.confirm). A
        read that fails leaves the state as the watch gave it."""
        try:
            body = await self._kube.read_credential(record.namespace, record.name)
        except failures.ApiError:
            return False
        return record.confirm(body)

    async def _material(
        self, namespace: str, spec: model.ClientCredentialSpec, attempt: progress.Attempt
    ) -> tuple[model.ClientAuthMaterial, dict[str, dict[str, Any]]]:
        """Read every Secret holding the client's proof (each once) and collect it; the
        Secrets too, by name, for their allowed destinations.

        A Secret the watch delivered shortly before is used as delivered (decision 0025).
        """
        found: dict[str, dict[str, Any] | None] = {}
        versions = []
        try:
            for name in spec.secret_names:
                source = self._seen.get(namespace, name)
                if source is None:
                    source = await self._kube.read_secret(namespace, name)
                found[name] = source
                meta = (source or {}).get("metadata") or {}
                versions.append(str(meta.get("resourceVersion") or ""))
        except failures.ApiError as exc:
            raise failures.from_api_error(exc) from None
        if found and any(found.values()):
            attempt.source_version = ",".join(versions)
        material = sources.auth_material(found, spec=spec)  # raises if one is missing
        return material, {name: body for name, body in found.items() if body is not None}

    @staticmethod
    def _check_destination(source: dict[str, Any], kind: str, name: str, url: str) -> None:
        """Refuse, before anything is sent, a destination the proof's owner did not list."""
        if not destinations.allows(source, url):
            raise destinations.refused(kind, name, url)

    @staticmethod
    def _methods(
        spec: model.ClientCredentialSpec,
        where: endpoint.Endpoint,
        material: model.ClientAuthMaterial,
        *,
        remembered: str | None,
    ) -> list[model.AuthMethod]:
        """The methods to try, in order; with ``auto``, what worked last time first."""
        request = where.request
        methods = clientauth.candidates(
            request.auth_method,
            grants.client_material(request.grant, material),
            where.supported,
            algorithm=request.assertion.algorithm,
            service_account=spec.service_account_ref is not None,
            grant_proves_client=request.grant.proves_client,
        )
        if request.auth_method is not model.AuthMethod.AUTO or not remembered:
            return methods
        try:
            last = model.AuthMethod(remembered)
        except ValueError:
            return methods
        if last not in methods:
            return methods
        # If the server now refuses it, the others are tried, each once.
        return [last, *(m for m in methods if m is not last)]

    async def _refreshed(
        self,
        record: tracking.Record,
        spec: model.ClientCredentialSpec,
        where: endpoint.Endpoint,
        material: model.ClientAuthMaterial,
        *,
        methods: list[model.AuthMethod],
        proofs: dict[str, dict[str, Any]],
    ) -> responses.FetchResult | None:
        """The refresh_token grant with the refresh token of the last response (decision
        0048), at spec.grant.refreshURL or the token URL. None when there is none for this
        generation of the spec, or when the server refuses it (invalid_grant): then the
        caller uses spec.grant. Any other failure is the attempt's, the refresh token kept.
        """
        kept = record.refresh_token if record.refresh_generation == record.generation else None
        if kept is None:
            return None
        url = spec.request.grant.refresh_url
        if url is not None:
            # Another destination: the same URL policy and the same owners' consent.
            self._endpoints.check_url(url, kind=failures.Kind.SPEC)
            for name, proof in proofs.items():
                self._check_destination(proof, "Secret", name, url)
            if model.AuthMethod.WORKLOAD_IDENTITY in methods:
                assert spec.service_account_ref is not None  # a candidate only with one
                await self._check_account_destination(
                    record.namespace, spec.service_account_ref.name, url
                )
            request = dataclasses.replace(where.request, token_url=url)
            where = dataclasses.replace(where, request=request)
        try:
            result = await self._fetch(
                where,
                dataclasses.replace(material, refresh_token=kept),
                methods=methods,
                policy=spec.refresh,
                record=record,
            )
        except failures.TokenError as exc:
            if exc.error_code != "invalid_grant":
                raise
            record.refresh_token = None
            return None
        if result.token.refresh_token is None:
            # RFC 6749 section 6: without a new refresh token, the old one stays good.
            token = dataclasses.replace(result.token, refresh_token=kept)
            result = dataclasses.replace(result, token=token)
        return result

    async def _chained_token(
        self, namespace: str, ref: model.SecretKeyRef, destination: str
    ) -> str:
        """The token in another credential's target Secret (chaining, decision 0047).

        Only a Secret tokensync manages, and only to a destination its annotation lists:
        the source credential's spec.target.allowedDestinations, so that its owner, not
        the tenant naming it here, chooses where its token may go (decisions 0017, 0032).
        """
        source = self._seen.get(namespace, ref.name)
        try:
            if source is None:
                source = await self._kube.read_secret(namespace, ref.name)
        except failures.ApiError as exc:
            raise failures.from_api_error(exc) from None
        if source is None:
            raise sources.SourceProblem(
                failures.Reason.CREDENTIALS_MISSING, f"Secret {ref.name!r} not found"
            )
        labels = (source.get("metadata") or {}).get("labels") or {}
        if labels.get(model.MANAGED_BY_LABEL) != model.MANAGED_BY_VALUE:
            raise sources.SourceProblem(
                failures.Reason.CREDENTIALS_MISSING,
                f"Secret {ref.name!r} is not the target of a ClientCredential",
            )
        self._check_destination(source, "Secret", ref.name, destination)
        token = sources.decoded(source, ref.key)
        if not token:
            raise sources.SourceProblem(
                failures.Reason.CREDENTIALS_MISSING,
                f"Secret {ref.name!r} has no non-empty key {ref.key!r}",
            )
        return token

    async def _check_account_destination(self, namespace: str, name: str, url: str) -> None:
        try:
            account = await self._kube.read_service_account(namespace, name)
        except failures.ApiError as exc:
            raise failures.from_api_error(exc) from None
        if account is None:
            raise failures.Failure(
                failures.Reason.SERVICE_ACCOUNT_NOT_FOUND,
                f"ServiceAccount {name!r} not found",
                kind=failures.Kind.PERMANENT,
            )
        self._check_destination(account, "ServiceAccount", name, url)

    async def _service_account_token(
        self, namespace: str, ref: model.ServiceAccountRef, destination: str
    ) -> str:
        """A fresh ServiceAccount token for workload identity federation, if the account
        opted in to this audience and destination; tokensync mints none otherwise."""
        permanent = failures.Kind.PERMANENT
        try:
            account = await self._kube.read_service_account(namespace, ref.name)
            if account is None:
                raise failures.Failure(
                    failures.Reason.SERVICE_ACCOUNT_NOT_FOUND,
                    f"ServiceAccount {ref.name!r} not found",
                    kind=permanent,
                )
            if not sources.service_account_allows(account, ref.audience):
                raise failures.Failure(
                    failures.Reason.SERVICE_ACCOUNT_NOT_OPTED_IN,
                    f"ServiceAccount {ref.name!r} does not list the audience "
                    f"{ref.audience!r} in its annotation {model.TOKEN_AUDIENCES_ANNOTATION}",
                    kind=permanent,
                )
            self._check_destination(account, "ServiceAccount", ref.name, destination)
            return await self._kube.create_token(
                namespace, ref.name, audience=ref.audience, seconds=SERVICE_ACCOUNT_TOKEN_SECONDS
            )
        except failures.ApiError as exc:
            if exc.status == 403:
                raise failures.Failure(
                    failures.Reason.SERVICE_ACCOUNT_TOKEN_FORBIDDEN,
                    "the operator may not read ServiceAccounts or create their tokens: "
                    "workload identity is an opt-in grant; enable it with the Helm value "
                    "workloadIdentity.enabled=true (workloadIdentity.namespaces to limit it) "
                    "or the kustomize component deploy/components/workload-identity "
                    "(docs/install.md#workload-identity)",
                    kind=permanent,
                ) from None
            raise failures.from_api_error(exc) from None

    async def _fetch(
        self,
        where: endpoint.Endpoint,
        material: model.ClientAuthMaterial,
        *,
        methods: list[model.AuthMethod],
        policy: model.RefreshPolicy,
        record: tracking.Record,
    ) -> responses.FetchResult:
        """The token request, in the host's pace, counted and timed."""
        host = urllib.parse.urlsplit(where.request.token_url).hostname or ""
        started: float | None = None  # when the request leaves, after the host's slot
        try:
            async with self._pacer.slot(host):
                if not self._serving(record):
                    raise HandedOver
                started = time.monotonic()
                result = await oauth.fetch_token(
                    where.http,
                    request=where.request,
                    credentials=material,
                    default_lifetime=policy.default_lifetime,
                    now=self._clock,
                    timeout=self._settings.request_timeout,
                    methods=methods,
                )
        except failures.TokenError as exc:
            self._metrics.requests.labels("error", exc.reason).inc()
            self._endpoints.forget(where)
            if exc.reason is failures.Reason.CONNECTION_FAILED:
                refused = await self._endpoints.certificate_refused(where, material)
                if refused is not None:
                    raise refused from None
            raise
        finally:
            if started is not None:
                self._metrics.duration.observe(time.monotonic() - started)
        self._metrics.requests.labels("success", "").inc()
        return result
