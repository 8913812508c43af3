"""Entry points: ``tokensync run`` (the operator) and ``tokensync fetch`` (one request).

``fetch`` needs no cluster: it sends the same token request the operator would, from
flags or a ClientCredential YAML file, and prints the token's metadata. It is the quickest
way to debug an identity provider's settings. The token itself is printed only on request.
Both read the egress proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` (0049).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import re
import secrets
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import yaml

from tokensync import (
    clientauth,
    config,
    discovery,
    failures,
    grants,
    headers,
    model,
    oauth,
    parsing,
    proxies,
    shape,
    transport,
    urlpolicy,
)

SECRET_ENV = "TOKENSYNC_CLIENT_SECRET"
DEFAULTS = config.DEFAULTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokensync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace", action="append", default=[], help="watch only these (repeatable)"
    )
    run.add_argument(
        "--metrics-port", type=int, default=DEFAULTS.metrics_port, help="Prometheus port (0: off)"
    )
    run.add_argument("--health-port", type=int, default=8081, help="liveness probe port (0: off)")
    run.add_argument(
        "--refresh-port",
        type=_port,
        default=DEFAULTS.refresh_port,
        help="port of the refresh endpoint, where a workload holding a token asks for a new "
        "one (0: off)",
    )
    run.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept http:// token URLs (local demos and tests only)",
    )
    run.add_argument(
        "--allowed-token-host",
        action="append",
        default=[],
        help="restrict token endpoints to these hosts; '*.example.com' matches subdomains",
    )
    _private_network_flag(run)
    run.add_argument(
        "--workers", type=_positive_int, default=DEFAULTS.workers, help="concurrent refreshes"
    )
    run.add_argument(
        "--kube-workers",
        type=_positive_int,
        default=DEFAULTS.kube_workers,
        help="Kubernetes API requests at once (reads and writes of Secrets and status)",
    )
    run.add_argument(
        "--token-rate",
        type=_positive_float,
        default=DEFAULTS.token_rate_per_host,
        help="token requests/s per host",
    )
    run.add_argument(
        "--token-concurrency",
        type=_positive_int,
        default=DEFAULTS.token_concurrency_per_host,
        help="token requests in flight per host",
    )
    run.add_argument(
        "--event-rate",
        type=_positive_float,
        default=DEFAULTS.event_rate,
        help="Kubernetes Events posted per second at most (bursts of 100); the rest are skipped",
    )
    run.add_argument(
        "--resync-interval",
        type=_positive_float,
        default=DEFAULTS.resync_interval,
        help="seconds between full listings that forget credentials deleted while a watch was down",
    )
    _lease_flags(run)
    run.add_argument("--verbose", action="store_true", help="debug logging")

    fetch = sub.add_parser(
        "fetch",
        help="request one token, no cluster needed",
        description="Honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY as the operator does.",
    )
    fetch.add_argument("--file", type=pathlib.Path, help="a ClientCredential YAML file")
    fetch.add_argument("--token-url")
    fetch.add_argument("--issuer-url", help="find the token endpoint by discovery")
    fetch.add_argument("--client-id")
    fetch.add_argument("--auth-method", choices=[m.value for m in model.AuthMethod])
    fetch.add_argument("--scope", action="append", default=[])
    fetch.add_argument("--audience")
    fetch.add_argument("--resource", action="append", default=[])
    fetch.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    fetch.add_argument(
        "--response-mapping",
        action="append",
        default=[],
        metavar="FIELD=PATH",
        help="where a non-standard JSON response keeps a field (spec.responseMapping), e.g. "
        "accessToken=data.accessToken; repeatable, replaces the file's mapping",
    )
    fetch.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra request header, as spec.requestHeaders (repeatable)",
    )
    fetch.add_argument(
        "--header-env",
        action="append",
        default=[],
        metavar="NAME=VARIABLE",
        help="an extra request header whose value is in an environment variable: for a "
        "--file header with valueFrom, or an API key (repeatable)",
    )
    fetch.add_argument(
        "--fallback-secret-env",
        action="append",
        default=[],
        metavar="VARIABLE",
        help=f"an environment variable holding an older client secret, tried after "
        f"${SECRET_ENV} when the server refuses it, as "
        "spec.clientSecretRef.fallbackClientSecretKeys (at most 2)",
    )
    fetch.add_argument(
        "--grant-type",
        choices=[g.value for g in model.GrantType],
        help="spec.grant.type (default: the file's, else client_credentials); jwt_bearer signs "
        "its assertion with --private-key",
    )
    fetch.add_argument("--grant-type-uri", help="spec.grant.grantTypeURI, for --grant-type custom")
    fetch.add_argument(
        "--subject-token-env",
        metavar="VARIABLE",
        help="token_exchange: an environment variable holding the subject token (fetch mints "
        "no ServiceAccount token: `kubectl create token` can)",
    )
    fetch.add_argument(
        "--refresh-token-env",
        metavar="VARIABLE",
        help="use the refresh_token grant with the refresh token in this environment variable "
        "(one printed by --show-token), at --refresh-url or the file's refreshURL or the token URL",
    )
    fetch.add_argument("--refresh-url", help="spec.grant.refreshURL: where refresh tokens go")
    fetch.add_argument("--subject-token-type", help="token_exchange: subject_token_type")
    fetch.add_argument("--requested-token-type", help="token_exchange: requested_token_type")
    fetch.add_argument("--allow-insecure-http", action="store_true")
    _private_network_flag(fetch)
    fetch.add_argument("--private-key", type=pathlib.Path, help="PEM or JWK file: private_key_jwt")
    fetch.add_argument(
        "--certificate", type=pathlib.Path, help="PEM certificate of --private-key (x5t#S256)"
    )
    fetch.add_argument("--client-cert", type=pathlib.Path, help="PEM client certificate: mTLS")
    fetch.add_argument("--client-key", type=pathlib.Path, help="PEM key of --client-cert")
    fetch.add_argument("--ca-bundle", type=pathlib.Path, help="PEM CAs to trust")
    fetch.add_argument("--show-token", action="store_true", help="also print the access token")
    fetch.add_argument(
        "--render",
        action="store_true",
        help="with --file: also print the target Secret's type and data as tokensync would "
        "write them for this token (spec.target.template, dockerConfig); they hold the token",
    )
    return parser


def _lease_flags(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("leader election and sharding (decision 0050)")
    group.add_argument(
        "--leader-elect",
        action="store_true",
        help="serve only the shards whose Lease this replica holds; the others stand by warm",
    )
    group.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or _in_cluster_namespace(),
        help="namespace of the Leases (default: $POD_NAMESPACE, else the pod's namespace)",
    )
    group.add_argument(
        "--lease-name",
        default=DEFAULTS.lease_name,
        type=_lease_name,
        help="prefix of the Lease names: NAME-shard-<i>, NAME-member-<identity>",
    )
    for flag, default, what in (
        ("--lease-duration", DEFAULTS.lease_duration, "how long a Lease holds unrenewed"),
        ("--renew-deadline", DEFAULTS.renew_deadline, "a holder stops serving unrenewed after"),
        ("--retry-period", DEFAULTS.retry_period, "how often Leases are renewed and looked at"),
    ):
        group.add_argument(flag, type=_positive_float, default=default, help=f"seconds: {what}")
    group.add_argument(
        "--shards",
        type=_positive_int,
        default=DEFAULTS.shards,
        help="shards the credentials are split into; every replica must run with the same",
    )
    group.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        type=_lease_name,
        help="this replica's name in the Leases (default: $POD_NAME, else the host name); "
        "a random suffix is added",
    )


def _in_cluster_namespace() -> str | None:
    path = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _lease_name(text: str) -> str:
    name = text.lower()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?", name):
        raise argparse.ArgumentTypeError(f"not a DNS name: {text!r}")
    return name


def _lease_timings(args: argparse.Namespace) -> str | None:
    """What is wrong with the lease timings, as client-go checks them."""
    if args.renew_deadline >= args.lease_duration:
        return "--renew-deadline must be shorter than --lease-duration"
    if args.retry_period * 1.2 >= args.renew_deadline:
        return "--retry-period must be well under --renew-deadline (1.2 x retry < deadline)"
    if args.leader_elect and not args.lease_namespace:
        return "--leader-elect needs --lease-namespace (or POD_NAMESPACE)"
    return None


def _private_network_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-private-network",
        dest="private_networks",
        metavar="CIDR|HOST",
        type=_private_entries,
        action="extend",
        default=[],
        help="allow token endpoints on loopback, private or cluster-internal destinations: "
        "a CIDR (10.0.0.0/8), an address (::1) or a host name (*.auth.svc.cluster.local); "
        "repeatable, or comma-separated. Metadata and link-local addresses stay refused",
    )


def _private_entries(text: str) -> list[str]:
    """One flag value: its entries, each checked now rather than at the first request."""
    entries = [item.strip() for item in text.split(",") if item.strip()]
    try:
        urlpolicy.Allowance.parse(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return asyncio.run(_fetch(args))


def _run(args: argparse.Namespace) -> int:
    egress = _egress()  # a bad proxy variable stops the operator before it starts
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Request-level logs of the clients carry URLs and headers; keep them quiet.
    for noisy in ("httpx", "httpcore", "urllib3", "kubernetes", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    wrong = _lease_timings(args)
    if wrong:
        _parser().error(wrong)
    settings = config.Config(
        allow_insecure_http=args.allow_insecure_http,
        allowed_hosts=frozenset(args.allowed_token_host) or None,
        private_networks=tuple(args.private_networks),
        metrics_port=args.metrics_port or None,
        refresh_port=args.refresh_port or None,
        workers=args.workers,
        kube_workers=args.kube_workers,
        token_rate_per_host=args.token_rate,
        token_concurrency_per_host=args.token_concurrency,
        event_rate=args.event_rate,
        namespaces=tuple(args.namespace),
        resync_interval=args.resync_interval,
        leader_elect=args.leader_elect,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        shards=args.shards,
        # Unique per process: a restarted pod waits for its old Leases like any replica.
        identity=f"{args.identity[:40].rstrip('-.')}-{secrets.token_hex(3)}",
    )
    logging.getLogger(__name__).info(
        "private networks allowed as token endpoints: %s",
        urlpolicy.Allowance.parse(settings.private_networks),
    )
    # The proxy is named by host and port only: its URL may hold a password.
    logging.getLogger(__name__).info("egress proxy: %s", egress)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(_operate(settings, namespaces=args.namespace, liveness=liveness))
    return 0


async def _operate(settings: config.Config, *, namespaces: list[str], liveness: str | None) -> None:
    import kopf  # noqa: PLC0415 -- imported here so that `tokensync fetch` starts fast

    from tokensync import handlers  # noqa: F401, PLC0415 -- registers the kopf handlers

    await kopf.operator(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=settings),
    )


def _request_from(
    args: argparse.Namespace,
) -> tuple[model.TokenRequest, str | None, model.RefreshPolicy, str | None]:
    if args.file:
        doc = yaml.safe_load(args.file.read_text())
        docs = doc if isinstance(doc, list) else [doc]
        found = next((d for d in docs if isinstance(d, dict) and d.get("kind") == model.KIND), None)
        if found is None:
            raise SystemExit(f"{args.file}: no {model.KIND} in the file")
        spec = parsing.parse_spec(found.get("spec") or {}, name=found["metadata"]["name"])
        request, client_id, refresh = spec.request, spec.client_id, spec.refresh
        issuer = spec.issuer_url
        declared = spec.request_headers
    elif args.token_url or args.issuer_url:
        request, client_id, refresh = (
            model.TokenRequest(token_url=args.token_url or ""),
            None,
            model.RefreshPolicy(),
        )
        issuer = None
        declared = ()
    else:
        raise SystemExit("give --token-url, --issuer-url or --file")
    extra = dict(request.extra_params)
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: use KEY=VALUE")
        extra[key] = value
    request = model.TokenRequest(
        token_url=args.token_url or request.token_url,
        auth_method=model.AuthMethod(args.auth_method) if args.auth_method else request.auth_method,
        scopes=tuple(args.scope) or request.scopes,
        audience=args.audience or request.audience,
        resources=tuple(args.resource) or request.resources,
        extra_params=tuple(sorted(extra.items())),
        assertion=request.assertion,
        response_mapping=_response_mapping(args.response_mapping) or request.response_mapping,
        headers=_headers(args, declared),
        grant=_grant(args, request.grant),
    )
    issuer = args.issuer_url or (None if args.token_url else issuer)
    return request, args.client_id or client_id, refresh, issuer


def _grant(args: argparse.Namespace, declared: model.Grant) -> model.Grant:
    """spec.grant of --file, or the one --grant-type and its flags give, checked by the
    parser's rules (decision 0047). The subject token is not here: see _subject_token."""
    if args.grant_type is None and declared.type is not model.GrantType.TOKEN_EXCHANGE:
        if args.grant_type_uri or args.subject_token_type or args.requested_token_type:
            raise SystemExit("--grant-type-uri and the token type flags need --grant-type")
        return declared
    grant_type = model.GrantType(args.grant_type or declared.type)
    raw: dict[str, Any] = {"type": grant_type.value}
    if args.grant_type_uri or declared.uri:
        raw["grantTypeURI"] = args.grant_type_uri or declared.uri
    if declared.refresh_url:
        raw["refreshURL"] = declared.refresh_url
    if grant_type is model.GrantType.TOKEN_EXCHANGE:
        # A placeholder ServiceAccount for the parser's check: fetch has no cluster, the
        # subject token comes from --subject-token-env.
        exchange = declared.token_exchange or model.TokenExchange()
        raw["tokenExchange"] = {
            "subjectServiceAccountRef": {"name": "fetch", "audience": "fetch"},
            "subjectTokenType": args.subject_token_type or exchange.subject_token_type,
        }
        requested = args.requested_token_type or exchange.requested_token_type
        if requested:
            raw["tokenExchange"]["requestedTokenType"] = requested
    try:
        grant = parsing.parse_grant(raw)
    except model.SpecError as exc:
        raise SystemExit(f"--grant-type: {exc}") from None
    if grant.token_exchange is not None:
        grant = dataclasses.replace(
            grant,
            token_exchange=dataclasses.replace(grant.token_exchange, subject_service_account=None),
        )
    return grant


def _subject_token(args: argparse.Namespace, grant: model.Grant) -> str | None:
    """The token exchange's subject token, from --subject-token-env (never printed)."""
    if grant.type is not model.GrantType.TOKEN_EXCHANGE:
        if args.subject_token_env:
            raise SystemExit("--subject-token-env is for --grant-type token_exchange")
        return None
    if not args.subject_token_env:
        raise SystemExit("token_exchange needs --subject-token-env VARIABLE")
    return _env(args.subject_token_env, "--subject-token-env")


def _env(variable: str | None, flag: str) -> str | None:
    """The value of an environment variable a flag names (never printed)."""
    if not variable:
        return None
    value = os.environ.get(variable, "").strip()
    if not value:
        raise SystemExit(f"{flag}: ${variable} is not set")
    return value


def _response_mapping(items: list[str]) -> model.ResponseMapping | None:
    """--response-mapping FIELD=PATH, repeatable: spec.responseMapping's fields, same rules."""
    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in model.RESPONSE_MAPPING_FIELDS:
            fields = ", ".join(model.RESPONSE_MAPPING_FIELDS)
            raise SystemExit(
                f"--response-mapping {item!r}: use FIELD=PATH with FIELD one of {fields}"
            )
        raw[key] = value
    if not raw:
        return None
    try:
        return parsing.parse_response_mapping(raw)
    except model.SpecError as exc:
        raise SystemExit(f"--response-mapping: {exc}") from None


def _pairs(items: Sequence[str], flag: str) -> dict[str, tuple[str, str]]:
    """NAME=VALUE items as (NAME, VALUE) by lower-case name (header names compare
    case-insensitively)."""
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag}: use NAME=VALUE")
        found[name.lower()] = (name, value)
    return found


def _headers(
    args: argparse.Namespace, declared: Sequence[model.RequestHeader]
) -> tuple[tuple[str, str], ...]:
    """spec.requestHeaders of --file, then --header and --header-env (decision 0044). A
    header whose value the spec takes from a Secret needs --header-env: fetch reads no
    Secret. Messages name headers and variables, never values."""
    inline = _pairs(args.header, "--header")
    from_env = _pairs(args.header_env, "--header-env")
    chosen: dict[str, tuple[str, str]] = {}
    for header in declared:
        if header.value is not None:
            chosen[header.name.lower()] = (header.name, header.value)
        elif header.name.lower() not in from_env and header.name.lower() not in inline:
            assert header.secret is not None
            raise SystemExit(
                f"spec.requestHeaders: {header.name} takes its value from Secret "
                f"{header.secret.name!r} key {header.secret.key!r}: give it with "
                f"--header-env {header.name}=VARIABLE"
            )
    chosen.update(inline)
    for key, (name, variable) in from_env.items():
        value = os.environ.get(variable, "").strip()
        if not value:
            raise SystemExit(f"--header-env {name}: ${variable} is not set")
        chosen[key] = (name, value)
    for name, value in chosen.values():
        problem = headers.name_problem(name)
        if problem is not None:
            raise SystemExit(f"header {problem}")
        if not headers.valid_value(value):
            raise SystemExit(f"header {name}: the value is not one line of visible ASCII")
    return tuple(chosen.values())


def _fallback_secrets(variables: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """--fallback-secret-env: (variable, secret) pairs, as fallbackClientSecretKeys."""
    if len(variables) > model.MAX_CLIENT_SECRET_KEYS - 1:
        raise SystemExit(
            f"--fallback-secret-env: at most {model.MAX_CLIENT_SECRET_KEYS - 1} variables"
        )
    found = []
    for variable in variables:
        value = os.environ.get(variable)
        if not value:
            raise SystemExit(f"--fallback-secret-env: ${variable} is not set")
        found.append((variable, value))
    return tuple(found)


def _read(path: pathlib.Path | None) -> str | None:
    return path.read_text() if path else None


def _context(ca_pem: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | bool:
    if not (ca_pem or cert):
        return True
    try:
        return transport.tls_context(ca_pem=ca_pem, client_cert_pem=cert, client_key_pem=key)
    except (transport.BadCABundle, transport.BadClientCertificate) as exc:
        raise SystemExit(str(exc)) from None


def _egress() -> proxies.Proxies:
    """The proxies of this process's environment, as the operator reads them (0049)."""
    try:
        return proxies.from_environment(os.environ)
    except proxies.BadProxy as exc:
        raise SystemExit(str(exc)) from None


def _client(
    verify: ssl.SSLContext | bool, allowance: urlpolicy.Allowance, egress: proxies.Proxies
) -> httpx.AsyncClient:
    """The operator's kind of client: the same destination rules, checked on connect, and
    the same proxy."""
    return transport.guarded_client(
        verify=verify,
        allowance=allowance,
        timeout=DEFAULTS.request_timeout,
        limits=httpx.Limits(max_connections=2),
        egress=egress,
    )


def _target_from(args: argparse.Namespace) -> model.TargetSpec | None:
    """spec.target of --file, for --render; its template checked before any request."""
    if not args.render:
        return None
    if not args.file:
        raise SystemExit("--render needs --file: the target comes from the ClientCredential")
    doc = yaml.safe_load(args.file.read_text())
    docs = doc if isinstance(doc, list) else [doc]
    found = next((d for d in docs if isinstance(d, dict) and d.get("kind") == model.KIND), None)
    if found is None:
        raise SystemExit(f"{args.file}: no {model.KIND} in the file")
    spec = parsing.parse_spec(found.get("spec") or {}, name=found["metadata"]["name"])
    shape.check(spec.target)
    return spec.target


async def _fetch(args: argparse.Namespace) -> int:
    request, client_id, refresh, issuer = _request_from(args)
    try:
        wanted = _target_from(args)
    except failures.Failure as exc:
        print(f"error: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    client_secret = os.environ.get(SECRET_ENV) or None
    credentials = model.ClientAuthMaterial(
        client_id=client_id or "",
        client_secret=client_secret,
        client_secret_key=SECRET_ENV if client_secret else None,
        fallback_secrets=_fallback_secrets(args.fallback_secret_env) if client_secret else (),
        private_key=_read(args.private_key),
        certificate=_read(args.certificate),
        tls_certificate=_read(args.client_cert),
        tls_key=_read(args.client_key),
        subject_token=_subject_token(args, request.grant),
        refresh_token=_env(args.refresh_token_env, "--refresh-token-env"),
    )
    # The refresh_token grant replaces spec.grant's for this request (decision 0048).
    refresh_url = (
        (args.refresh_url or request.grant.refresh_url) if credentials.refresh_token else None
    )
    if (
        request.grant.type is model.GrantType.JWT_BEARER
        and not credentials.private_key
        and not credentials.refresh_token
    ):
        print(
            "--grant-type jwt_bearer needs --private-key (it signs the assertion)", file=sys.stderr
        )
        return 2
    if not client_id or not (
        credentials.client_secret
        or credentials.private_key
        or credentials.tls_certificate
        or request.grant.proves_client
        or credentials.refresh_token
    ):
        print(
            f"need a client id (--client-id or spec.clientID) and ${SECRET_ENV}, "
            "--private-key or --client-cert",
            file=sys.stderr,
        )
        return 2
    ca_pem = _read(args.ca_bundle)
    supported: tuple[str, ...] | None = None
    allowance = urlpolicy.Allowance.parse(args.private_networks)
    egress = _egress()
    try:
        async with (
            _client(_context(ca_pem, None, None), allowance, egress) as plain,
            _client(
                _context(ca_pem, credentials.tls_certificate, credentials.tls_key),
                allowance,
                egress,
            ) as http,
        ):
            if issuer:
                urlpolicy.check_token_url(
                    issuer, allow_insecure_http=args.allow_insecure_http, allowance=allowance
                )
                metadata = await discovery.fetch_metadata(
                    plain, issuer, timeout=DEFAULTS.request_timeout, headers=request.headers
                )
                token_url = discovery.token_endpoint(
                    metadata, client_certificate=bool(credentials.tls_certificate)
                )
                request = dataclasses.replace(request, token_url=token_url)
                supported = metadata.auth_methods
            if refresh_url:
                request = dataclasses.replace(request, token_url=refresh_url)
            urlpolicy.check_token_url(
                request.token_url, allow_insecure_http=args.allow_insecure_http, allowance=allowance
            )
            result = await oauth.fetch_token(
                http,
                request=request,
                credentials=credentials,
                default_lifetime=refresh.default_lifetime,
                now=lambda: datetime.datetime.now(datetime.UTC),
                methods=clientauth.candidates(
                    request.auth_method,
                    grants.client_material(request.grant, credentials),
                    supported,
                    algorithm=request.assertion.algorithm,
                    grant_proves_client=request.grant.proves_client,
                ),
            )
    except failures.TokenError as exc:
        print(f"error: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    token = result.token
    out: dict[str, Any] = {
        "auth_method": result.auth_method.value,
        "token_type": token.token_type,
        "issued_at": token.issued_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "lifetime_seconds": int(token.lifetime.total_seconds()),
        "lifetime_source": token.lifetime_source,
        "scope": token.scope,
    }
    if result.client_secret_key is not None:
        # The variable whose secret worked, and those refused before it: never the secrets.
        out["client_secret_from"] = result.client_secret_key
        out["refused_client_secrets_from"] = list(result.refused_keys)
    # Whether one came, not the token: it is a credential that outlives the access token.
    out["refresh_token_issued"] = token.refresh_token is not None
    if args.show_token:
        out["access_token"] = token.access_token
        if token.refresh_token is not None:
            out["refresh_token"] = token.refresh_token
    if wanted is not None:
        shaped = shape.Token(
            access_token=token.access_token,
            token_type=token.token_type,
            expires_at=token.expires_at,
            scope=token.scope,
            issued_at=token.issued_at,
        )
        try:
            data = shape.render(wanted, shaped, show_error=True)
        except failures.Failure as exc:
            print(f"error: {exc.reason}: {exc}", file=sys.stderr)
            return 1
        out["secret"] = {
            "type": wanted.type.value,
            "data": {key: value for key, value in data.items() if value is not None},
        }
    print(json.dumps(out, indent=2))
    return 0
