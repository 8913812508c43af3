"""The API server's audit log of writes, read back: which process wrote what, and when.

A control plane started with ``LocalCluster(audit_log=...)`` records every create, update,
patch and delete at Metadata level: the verb, the object, the user agent, the response
code and when the request arrived, on this machine's clock (``time.time()`` compares with
it directly). tokensync names its replica in its user agent, ``tokensync/<version>
(<identity>)`` (decision 0050), so the log attributes each write to one operator process,
which neither the objects nor the token server can.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re

_IDENTITY = re.compile(r"^tokensync/\S+ \(([^)]+)\)")


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One write request as the API server answered it."""

    #: When the API server received it (seconds since 1970).
    at: float
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user_agent: str
    #: The authenticated user (both replicas of a test share one ServiceAccount).
    user: str
    code: int

    @property
    def replica(self) -> str | None:
        """The tokensync replica's identity in the user agent (None: not a replica's)."""
        found = _IDENTITY.match(self.user_agent)
        return found.group(1) if found else None

    @property
    def target(self) -> str:
        """``resource`` or ``resource/subresource``, as RBAC names it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def succeeded(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def from_event(cls, event: dict[str, object]) -> Write | None:
        ref = event.get("objectRef")
        status = event.get("responseStatus")
        received = event.get("requestReceivedTimestamp")
        if not isinstance(ref, dict) or not isinstance(received, str):
            return None
        code = status.get("code") if isinstance(status, dict) else None
        user = event.get("user")
        return cls(
            at=_timestamp(received),
            verb=str(event.get("verb") or ""),
            resource=str(ref.get("resource") or ""),
            subresource=str(ref.get("subresource") or ""),
            namespace=str(ref.get("namespace") or ""),
            name=str(ref.get("name") or ""),
            user_agent=str(event.get("userAgent") or ""),
            user=str(user.get("username") or "") if isinstance(user, dict) else "",
            code=int(code) if isinstance(code, int) else 0,
        )


class AuditLog:
    """Reads the log from where the last read stopped: a long test reads it in pieces."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._offset = 0
        self._writes: list[Write] = []

    def writes(self) -> list[Write]:
        """Every write logged so far (the log is read on to its last complete line)."""
        if self.path.exists():
            with self.path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
            complete = chunk.rfind(b"\n") + 1
            self._offset += complete
            for line in chunk[:complete].splitlines():
                event = json.loads(line)
                if event.get("stage") == "ResponseComplete":
                    write = Write.from_event(event)
                    if write is not None:
                        self._writes.append(write)
        return list(self._writes)
