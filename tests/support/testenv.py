"""One test's namespace, seen through the admin client: the base of every e2e module's ``Env``.

The e2e modules arrange their tests differently (a token server per module or per test, a
fault server in front of it, one client per credential, no operator at all), but they read
the outcome the same way: a ClientCredential and its Ready condition, the target Secret,
events, and waits on those. That part lives here, once. A module subclasses :class:`Env`
for what only it needs (its client Secrets, its credential defaults, its recorders) and
passes its own polling defaults (``timeout``, ``interval``) as arguments.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

from support.polling import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, wait_for

T = TypeVar("T")

# The API as a user writes it, spelled out rather than imported from the operator's code.
GROUP, VERSION, PLURAL, KIND = "tokensync.dev", "v1alpha1", "clientcredentials", "ClientCredential"
CLIENT_SECRET_LABEL = "tokensync.dev/client-secret"
ALLOWED_DESTINATIONS = "tokensync.dev/allowed-destinations"
#: Every token server of the e2e tests listens on loopback.
LOOPBACK = "127.0.0.1"
REFRESH_ANNOTATION = "tokensync.dev/refresh-requested-at"


def ready_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The Ready condition of a ClientCredential (None before the operator set one)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def decoded(data: dict[str, str] | None) -> dict[str, str]:
    """A Secret's ``data`` (base64 values) as text."""
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


class Env:
    """One test's namespace: its ClientCredentials, Secrets and events, and waits on them.

    ``timeout`` and ``interval`` are the defaults of :meth:`wait_for` and of every wait
    built on it (a module whose waits need other defaults passes them here).
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace
        self.timeout = timeout
        self.interval = interval

    def wait_for(
        self, check: Callable[[], T | None], *, what: str = "", timeout: float | None = None
    ) -> T:
        """:func:`support.polling.wait_for` with this environment's defaults."""
        return wait_for(
            check,
            timeout=self.timeout if timeout is None else timeout,
            what=what,
            interval=self.interval,
        )

    # -- ClientCredentials ---------------------------------------------------------------

    def create_credential(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name},
            "spec": spec,
        }
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, body
        )
        return created

    def get(self, name: str = "api") -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return got

    def credentials(self) -> dict[str, dict[str, Any]]:
        """Every ClientCredential in the namespace, by name."""
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL
        )
        return {i["metadata"]["name"]: i for i in listed["items"]}

    def status(self, name: str = "api") -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def ready(self, name: str = "api") -> dict[str, Any] | None:
        return ready_of(self.get(name))

    def patch(self, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def force_refresh(self, name: str = "api", value: str | None = None) -> str:
        """Set the refresh-requested annotation (to a new value unless given); returns it."""
        value = value or uuid.uuid4().hex
        self.patch(name, {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}})
        return value

    def wait_ready(
        self, name: str = "api", reason: str = "TokenIssued", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The Ready condition, once its reason is ``reason``."""

        def check() -> dict[str, Any] | None:
            ready = self.ready(name)
            return ready if ready and ready["reason"] == reason else None

        return self.wait_for(check, timeout=timeout, what=f"{name} Ready with reason {reason}")

    # -- Secrets -------------------------------------------------------------------------

    def secret(
        self,
        name: str,
        data: dict[str, str],
        *,
        opt_in: bool = True,
        type_: str = "Opaque",
        destinations: str | None = LOOPBACK,
    ) -> None:
        """Create a Secret from text values, labelled for tokensync unless ``opt_in=False``,
        allowed to be sent to ``destinations`` (the annotation; None: no annotation)."""
        labels = {CLIENT_SECRET_LABEL: "true"} if opt_in else {}
        annotations = {ALLOWED_DESTINATIONS: destinations} if destinations else {}
        metadata = {"name": name, "labels": labels, "annotations": annotations}
        self.core.create_namespaced_secret(
            self.ns, {"metadata": metadata, "type": type_, "stringData": data}
        )

    def replace_secret(self, name: str, data: dict[str, str]) -> None:
        """Replace the Secret's values with ``data`` (text)."""
        self.core.patch_namespaced_secret(
            name,
            self.ns,
            {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}},
        )

    def secret_data(self, name: str, *, raw: bool = False) -> dict[str, str] | None:
        """A Secret's data, decoded (or base64, byte for byte as stored); None if absent."""
        try:
            secret = self.core.read_namespaced_secret(name, self.ns)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, str] = dict(secret.data or {})
        return data if raw else decoded(data)

    def token(self, name: str = "api-token") -> str | None:
        """The access token in a target Secret (None while there is none)."""
        return (self.secret_data(name) or {}).get("access_token")

    # -- events --------------------------------------------------------------------------

    def events(self, name: str | None = None) -> list[client.CoreV1Event]:
        """The namespace's events (about object ``name`` only, if given), oldest first."""
        items = self.core.list_namespaced_event(self.ns).items
        # resourceVersion, not creationTimestamp: several events can share a second.
        return sorted(
            (e for e in items if name is None or e.involved_object.name == name),
            key=lambda e: int(e.metadata.resource_version),
        )
