"""Child processes of a local cluster: started in their own process group, logged to a file,
waited on until ready, and stopped with SIGTERM then SIGKILL.

The control plane (:mod:`localcluster.cluster`) and the node (:mod:`localcluster.node`)
start theirs the same way, so this lives apart from both.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

#: Every port :func:`free_port` handed out in this process. The kernel may offer a port it
#: just offered again once the probing socket is closed, and two servers of one test then
#: race for it (a CI run lost an operator's health port to its own metrics port that way).
_handed_out: set[tuple[str, int]] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago and that this process has not
    handed out before."""
    with _handed_out_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port


class Process:
    """One child process with its log file; started in its own process group."""

    def __init__(self, name: str, argv: list[str], log_path: pathlib.Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()

    def wait_ready(
        self,
        ready: Callable[[], bool],
        timeout: float,
        error: type[Exception],
        *,
        interval: float = 0.1,
        tail: int = 15,
    ) -> None:
        """Poll ``ready`` until it is true; raise ``error`` naming the log if the process
        exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise error(
                    f"{self.name} exited with code {self.popen.returncode} before it was "
                    f"ready; read {self.log_path}\n{self.log_tail(tail)}"
                )
            if ready():
                return
            time.sleep(interval)
        raise error(
            f"{self.name} was not ready within {timeout:.0f}s; read {self.log_path}\n"
            + self.log_tail(tail)
        )
