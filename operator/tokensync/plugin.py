"""``kubectl tokensync``: see and nudge ClientCredentials from the command line.

Installed as the console script ``kubectl-tokensync``; kubectl runs any executable named
``kubectl-*`` on PATH as a plugin. It talks to the API server with the kubernetes client
only, under the user's own kubeconfig and rights, and never prints a token: ``inspect``
shows a JWT's header and claims (readable by anyone holding the token, and useless without
it) and a SHA-256 fingerprint to tell tokens apart.

    kubectl tokensync status [-n NS | -A]      table of credentials, expiry, last error
    kubectl tokensync refresh NAME [-n NS]     force a new token now (the annotation)
    kubectl tokensync inspect NAME [-n NS]     the target Secret's token, decoded
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from kubernetes import client, config

from tokensync import model

_API = (model.GROUP, model.VERSION)
_LAST_ERROR_WIDTH = 60
#: Ready reasons whose message describes a failed refresh although Ready is True.
_FAILING_BUT_READY = frozenset({"RefreshFailing"})


class PluginError(Exception):
    """Something to tell the user, without a traceback."""


# -- pure helpers ---------------------------------------------------------------------


def short_duration(seconds: float) -> str:
    """``kubectl``-style compact duration: 45s, 12m, 3h5m, 2d4h."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def relative(moment: datetime.datetime | None, now: datetime.datetime) -> str:
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    return f"in {short_duration(delta)}" if delta >= 0 else f"{short_duration(delta)} ago"


def fingerprint(token: str) -> str:
    """A short digest that tells tokens apart and reveals nothing of them."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


@dataclasses.dataclass(frozen=True)
class DecodedToken:
    """What can be read from an access token without any key."""

    format: str  # "jwt", "jwe" or "opaque"
    header: Mapping[str, Any] | None = None
    claims: Mapping[str, Any] | None = None


def decode_token(token: str) -> DecodedToken:
    """Read a JWT's header and claims WITHOUT verifying the signature; else say opaque."""
    parts = token.split(".")
    if len(parts) not in (3, 5):
        return DecodedToken("opaque")
    try:
        header = _b64url_json(parts[0])
        claims = _b64url_json(parts[1]) if len(parts) == 3 else None
    except (ValueError, UnicodeError, binascii.Error):
        return DecodedToken("opaque")
    if not isinstance(header, dict) or "alg" not in header:
        return DecodedToken("opaque")
    if len(parts) == 5:
        return DecodedToken("jwe", header=header)
    if not isinstance(claims, dict):
        return DecodedToken("opaque")
    return DecodedToken("jwt", header=header, claims=claims)


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), {})


def last_error(obj: Mapping[str, Any]) -> str:
    """The message of a failing Ready condition (False, or True while refreshes fail)."""
    ready = ready_condition(obj)
    failing = ready.get("status") == "False" or ready.get("reason") in _FAILING_BUT_READY
    return str(ready.get("message") or "") if failing else ""


def status_row(obj: Mapping[str, Any], now: datetime.datetime) -> dict[str, str]:
    meta, status = obj["metadata"], obj.get("status") or {}
    ready = ready_condition(obj)
    return {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta["name"]),
        "ready": str(ready.get("status") or "Unknown"),
        "reason": str(ready.get("reason") or "-"),
        "expires": relative(model.parse_time(status.get("expiresAt")), now),
        "next refresh": relative(model.parse_time(status.get("nextRefreshAt")), now),
        "last error": last_error(obj) or "-",
    }


def table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["   ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["   ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- commands ---------------------------------------------------------------------------


class Plugin:
    def __init__(self, api: client.ApiClient, *, now: Callable[[], datetime.datetime]) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.now = now

    def _get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj = self.custom.get_namespaced_custom_object(*_API, namespace, model.PLURAL, name)
        except client.ApiException as exc:
            raise _api_error(exc, f"clientcredential {namespace}/{name}") from None
        return cast(dict[str, Any], obj)

    def status(self, namespace: str | None, *, wide: bool, output: str) -> str:
        try:
            if namespace is None:
                listed = self.custom.list_cluster_custom_object(*_API, model.PLURAL)
            else:
                listed = self.custom.list_namespaced_custom_object(*_API, namespace, model.PLURAL)
        except client.ApiException as exc:
            raise _api_error(exc, "clientcredentials") from None
        items = sorted(
            cast(list[dict[str, Any]], cast(dict[str, Any], listed).get("items") or []),
            key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        )
        now = self.now()
        rows = [status_row(obj, now) for obj in items]
        if output == "json":
            return json.dumps(rows, indent=2)
        if not rows:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            return f"No ClientCredentials in {where}."
        if not wide:
            for row in rows:
                row["last error"] = truncate(row["last error"], _LAST_ERROR_WIDTH)
        columns = ["namespace", "name", "ready", "reason", "expires", "next refresh"]
        return table(rows, [*columns, "last error"])

    def refresh(self, namespace: str, name: str, *, wait: float | None) -> str:
        self._get(namespace, name)  # a clear "not found" before patching
        value = self.now().astimezone(datetime.UTC).isoformat(timespec="microseconds")
        body = {"metadata": {"annotations": {model.REFRESH_REQUESTED_ANNOTATION: value}}}
        try:
            self.custom.patch_namespaced_custom_object(*_API, namespace, model.PLURAL, name, body)
        except client.ApiException as exc:
            raise _api_error(exc, f"clientcredential {namespace}/{name}") from None
        done = f"clientcredential {namespace}/{name}: refresh requested ({value})"
        if wait is None:
            return done
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            obj = self._get(namespace, name)
            status = obj.get("status") or {}
            if status.get("handledRefreshRequest") == value:
                ready = ready_condition(obj)
                expires = model.parse_time(status.get("expiresAt"))
                until = f", token valid until {model.format_time(expires)}" if expires else ""
                return (
                    f"{done}\nhandled: Ready={ready.get('status', 'Unknown')} "
                    f"({ready.get('reason', '-')}){until}"
                )
            time.sleep(0.5)
        raise PluginError(f"{done}, but tokensync had not handled it after {wait:g}s")

    def inspect(self, namespace: str, name: str, *, output: str) -> str:
        obj = self._get(namespace, name)
        status: Mapping[str, Any] = obj.get("status") or {}
        spec_target: Mapping[str, Any] = (obj.get("spec") or {}).get("target") or {}
        target = str(status.get("target") or spec_target.get("name") or f"{name}-token")
        try:
            secret = self.core.read_namespaced_secret(target, namespace)
        except client.ApiException as exc:
            raise _api_error(exc, f"secret {namespace}/{target}") from None
        data = {
            key: base64.b64decode(value).decode("utf-8", errors="replace")
            for key, value in (secret.data or {}).items()
        }
        token = data.get("access_token")
        if not token:
            raise PluginError(f"secret {namespace}/{target} holds no access_token yet")
        decoded = decode_token(token)
        now = self.now()
        expires = model.parse_time(data.get("expires_at"))
        report: dict[str, Any] = {
            "clientCredential": f"{namespace}/{name}",
            "ready": dict(ready_condition(obj)),
            "secret": target,
            "tokenType": data.get("token_type"),
            "scope": data.get("scope"),
            "fingerprint": fingerprint(token),
            "format": decoded.format,
            "expiresAt": model.format_time(expires) if expires else None,
            "header": decoded.header,
            "claims": decoded.claims,
        }
        if output == "json":
            return json.dumps(report, indent=2, default=str)
        return _inspect_text(report, decoded, expires, now)


def _inspect_text(
    report: Mapping[str, Any],
    decoded: DecodedToken,
    expires: datetime.datetime | None,
    now: datetime.datetime,
) -> str:
    ready = report["ready"]
    kind = {
        "jwt": "JWT",
        "jwe": "encrypted JWT (JWE): its claims cannot be read without the key",
        "opaque": "opaque (not a JWT): there are no claims to decode",
    }[decoded.format]
    lines = [
        f"ClientCredential: {report['clientCredential']}",
        f"Ready:            {ready.get('status', 'Unknown')} ({ready.get('reason', '-')})",
        f"Secret:           {report['secret']}",
        f"Token:            {kind}",
        f"Fingerprint:      {report['fingerprint']} (the token itself is never shown)",
        f"Token type:       {report['tokenType'] or '-'}",
        f"Scope:            {report['scope'] or '-'}",
        "Expires:          "
        + (f"{model.format_time(expires)} ({relative(expires, now)})" if expires else "-"),
    ]
    if decoded.header is not None:
        lines.append(f"Header:           {json.dumps(decoded.header, sort_keys=True)}")
    if decoded.claims is not None:
        lines.append("Claims (signature NOT verified):")
        lines += ["  " + line for line in json.dumps(decoded.claims, indent=2).splitlines()]
        for claim in ("iat", "nbf", "exp"):
            value = decoded.claims.get(claim)
            if isinstance(value, int | float) and not isinstance(value, bool):
                moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
                lines.append(f"  {claim}: {model.format_time(moment)} ({relative(moment, now)})")
    return "\n".join(lines)


def _api_error(exc: client.ApiException, what: str) -> PluginError:
    if exc.status == 404:
        return PluginError(f"{what} not found")
    if exc.status == 403:
        return PluginError(f"not allowed to read or change {what} (403 Forbidden)")
    return PluginError(f"{what}: API server answered {exc.status} {exc.reason}")


# -- command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl tokensync",
        description="See and nudge tokensync ClientCredentials.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context to use")
    sub = parser.add_subparsers(dest="command", required=True)

    def namespaced(command: argparse.ArgumentParser) -> None:
        command.add_argument("-n", "--namespace", help="default: the context's namespace")

    status = sub.add_parser("status", help="table of credentials: Ready, expiry, last error")
    namespaced(status)
    status.add_argument("-A", "--all-namespaces", action="store_true")
    status.add_argument("--wide", action="store_true", help="do not shorten the last error")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")

    refresh = sub.add_parser("refresh", help="fetch a new token now")
    refresh.add_argument("name")
    namespaced(refresh)
    refresh.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for tokensync to handle the request",
    )

    inspect = sub.add_parser("inspect", help="decode the token in the target Secret")
    inspect.add_argument("name")
    namespaced(inspect)
    inspect.add_argument("-o", "--output", choices=["text", "json"], default="text")
    return parser


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    try:
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except config.ConfigException:
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context
        )
    except (config.ConfigException, OSError) as exc:
        print(f"error: cannot load the kubeconfig: {exc}", file=sys.stderr)
        return 1
    namespace = args.namespace or _context_namespace(args.kubeconfig, args.context)
    plugin = Plugin(api, now=lambda: datetime.datetime.now(datetime.UTC))
    try:
        with api:
            if args.command == "status":
                scope = None if args.all_namespaces else namespace
                out = plugin.status(scope, wide=args.wide, output=args.output)
            elif args.command == "refresh":
                out = plugin.refresh(namespace, args.name, wait=args.wait)
            else:
                out = plugin.inspect(namespace, args.name, output=args.output)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
