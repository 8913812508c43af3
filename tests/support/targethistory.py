"""Every version of a namespace's target Secrets, from a watch, and what they tell.

A thread lists the Secrets tokensync manages in a namespace, then watches them, and keeps
each version: when the watch delivered it (``time.time()``), its token and the times the
operator annotated it with (issued at, expires at, refresh at). From that history:

- :func:`expiries`: a Secret that went on holding a token past its expiry (no refresh
  before it expired), while the history was recorded;
- :func:`rollbacks`: a Secret's issue time going backwards (decision 0036);
- :func:`overdue`: how long past its refresh time each token stayed in place, the longest
  a credential went unserved.

The watch adds its delivery delay (milliseconds on loopback) to every time, so the figures
are upper bounds.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import itertools
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from kubernetes import client, watch

MANAGED = "app.kubernetes.io/managed-by=tokensync"
ISSUED_AT = "tokensync.dev/issued-at"
EXPIRES_AT = "tokensync.dev/expires-at"
REFRESH_AT = "tokensync.dev/refresh-at"


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Version:
    """One version of a target Secret, as the watch delivered it."""

    seen: float
    name: str
    resource_version: str
    token: str = dataclasses.field(repr=False)
    issued_at: float | None
    expires_at: float | None
    refresh_at: float | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, seen: float) -> Version:
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        encoded = (body.get("data") or {}).get("access_token") or ""
        return cls(
            seen=seen,
            name=str(meta.get("name") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            token=base64.b64decode(encoded).decode() if encoded else "",
            issued_at=_time(annotations.get(ISSUED_AT)),
            expires_at=_time(annotations.get(EXPIRES_AT)),
            refresh_at=_time(annotations.get(REFRESH_AT)),
        )


class TargetHistory(threading.Thread):
    """Records every version of the namespace's target Secrets until stopped."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(name="target-history", daemon=True)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.relists = 0
        self.errors = 0
        self._versions: list[Version] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        version: str | None = None
        while not self._halt.is_set():
            try:
                if version is None:
                    listed: Any = self.core.list_namespaced_secret(
                        self.namespace, label_selector=MANAGED, _preload_content=False
                    )
                    body = json.loads(listed.data)
                    now = time.time()
                    self._add(Version.from_body(item, seen=now) for item in body["items"])
                    version = body["metadata"]["resourceVersion"]
                stream = watch.Watch()
                for event in stream.stream(
                    self.core.list_namespaced_secret,
                    self.namespace,
                    label_selector=MANAGED,
                    resource_version=version,
                    timeout_seconds=30,
                    _request_timeout=40,
                    deserialize=False,
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version, self.relists = None, self.relists + 1
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self._add([Version.from_body(obj, seen=time.time())])
                    if self._halt.is_set():
                        stream.stop()
            except client.ApiException as exc:
                if exc.status == 410:
                    version, self.relists = None, self.relists + 1
                else:
                    self.errors += 1
                    self._halt.wait(0.2)
            except Exception:  # the API server is busy or restarting
                self.errors += 1
                self._halt.wait(0.2)

    def _add(self, versions: Iterable[Version]) -> None:
        with self._lock:
            self._versions.extend(versions)

    def versions(self) -> list[Version]:
        with self._lock:
            return list(self._versions)

    def by_secret(self) -> dict[str, list[Version]]:
        """Each Secret's versions with a new token, in the order seen (the first kept)."""
        found: dict[str, list[Version]] = {}
        for version in self.versions():
            kept = found.setdefault(version.name, [])
            if not kept or kept[-1].token != version.token:
                kept.append(version)
        return found

    def __enter__(self) -> TargetHistory:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._halt.set()
        self.join(45)


def lateness(history: Mapping[str, list[Version]], *, until: float) -> dict[str, float]:
    """Each Secret's longest time between a token's expiry annotation and the next token seen
    (or ``until``): negative when every token was replaced ahead of its expiry."""
    found: dict[str, float] = {}
    for name, versions in history.items():
        for current, following in zip(versions, [*versions[1:], None], strict=True):
            if current.expires_at is None:
                continue
            replaced = following.seen if following is not None else until
            late = replaced - current.expires_at
            found[name] = max(found.get(name, -math.inf), late)
    return found


def expiries(
    history: Mapping[str, list[Version]], *, until: float, slack: float = 1.0
) -> dict[str, float]:
    """Secrets that held a token past its expiry (by more than ``slack`` s, for the watch
    delay and the annotation's whole seconds) before ``until``: name to the longest time."""
    return {name: late for name, late in lateness(history, until=until).items() if late > slack}


def rollbacks(history: Mapping[str, list[Version]]) -> dict[str, int]:
    """Secrets whose issued-at annotation went backwards, and how often."""
    found: dict[str, int] = {}
    for name, versions in history.items():
        times = [v.issued_at for v in versions if v.issued_at is not None]
        backwards = sum(1 for a, b in itertools.pairwise(times) if b < a)
        if backwards:
            found[name] = backwards
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Replacement:
    """A token replaced (or still in place at the end, ``replaced`` then being the end)."""

    name: str
    due: float
    replaced: float

    @property
    def late(self) -> float:
        return self.replaced - self.due


def replacements(history: Mapping[str, list[Version]], *, until: float) -> list[Replacement]:
    """Each token with a refresh time, and when the next one was seen (or ``until``, for
    the one in place at the end if it was due by then)."""
    found: list[Replacement] = []
    for name, versions in history.items():
        for current, following in zip(versions, [*versions[1:], None], strict=True):
            if current.refresh_at is None:
                continue
            if following is None and current.refresh_at >= until:
                continue
            replaced = following.seen if following is not None else until
            found.append(Replacement(name, current.refresh_at, replaced))
    return found


def overdue(history: Mapping[str, list[Version]], *, until: float) -> dict[str, float]:
    """Per Secret, the longest a token stayed in place past its refresh time (0 if never),
    up to ``until`` for the token in place at the end."""
    found = dict.fromkeys(history, 0.0)
    for replacement in replacements(history, until=until):
        found[replacement.name] = max(found[replacement.name], replacement.late)
    return found
