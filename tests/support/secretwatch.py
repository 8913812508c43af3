"""When each value of a Secret's key appeared, from a watch on the Secret.

A refresh's propagation to pods is measured from the moment the API server has the new
token: the watch event that brings a new ``resourceVersion`` with a new value. Polling would
add up to its interval to every figure; a watch adds the event's delivery, milliseconds.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time
from types import TracebackType

from kubernetes import client, watch


@dataclasses.dataclass(frozen=True)
class Version:
    """A value of the key, when the watch saw it (``time.time()``) and in which version."""

    at: float
    resource_version: str
    value: str = dataclasses.field(repr=False)


class SecretHistory:
    """Watch ``namespace/name`` in a thread; :meth:`versions` lists each new value of ``key``."""

    def __init__(
        self, api: client.ApiClient, namespace: str, name: str, key: str = "access_token"
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.key = key
        self._lock = threading.Lock()
        self._versions: list[Version] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def versions(self) -> list[Version]:
        with self._lock:
            return list(self._versions)

    def version_of(self, value: str) -> int | None:
        """The index in :meth:`versions` of ``value`` (None: never seen in the Secret)."""
        return next((i for i, v in enumerate(self.versions()) if v.value == value), None)

    def _seen(self, secret: client.V1Secret) -> None:
        raw = (secret.data or {}).get(self.key)
        if raw is None:
            return
        value = base64.b64decode(raw).decode()
        with self._lock:
            if not self._versions or self._versions[-1].value != value:
                self._versions.append(Version(time.time(), secret.metadata.resource_version, value))

    def _run(self) -> None:
        resource_version = ""
        selector = f"metadata.name={self.name}"
        try:
            while not self._stopping.is_set():
                stream = watch.Watch().stream(
                    self.core.list_namespaced_secret,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version or None,
                    timeout_seconds=2,  # returns every 2 s, so stop() is prompt
                )
                for event in stream:
                    secret = event["object"]
                    resource_version = secret.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(secret)
        except BaseException as exc:  # reported by stop(), which the test calls
            self.error = exc

    def start(self) -> SecretHistory:
        self._thread = threading.Thread(target=self._run, name="secret-history", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.error is not None:
            raise RuntimeError(f"the watch on {self.namespace}/{self.name} failed") from self.error

    def __enter__(self) -> SecretHistory:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
