"""Waiting for the operator: poll a check until it gives something truthy, or fail the test.

The operator acts asynchronously (watch events, timers, retries), so e2e tests observe its
effects by polling. This is the one polling helper they share (testenv.Env wraps it with a
test module's own defaults). The check always runs at least once, and once more at or after
the deadline, so a slow machine does not turn "true just in time" into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: What most waits need: the operator reacts to a change within a second or two.
DEFAULT_TIMEOUT = 20.0
#: Between checks; each check is typically an API request or two.
DEFAULT_INTERVAL = 0.1


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """The first truthy value ``check`` returns; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check}")
        time.sleep(interval)
