"""A real forward proxy on loopback: proxy.py (PyPI), in a process of its own.

Tests of egress through a proxy (decision 0049) need a proxy that speaks CONNECT as real
ones do, not one written for the test. proxy.py's own access-log line comes when a
connection closes, and a kept-alive tunnel stays open, so the plugin
``support.proxyplugins.LogConnects`` logs each CONNECT as it arrives: how a test counts the
tunnels the proxy was asked for (after authentication, before the upstream filter).
``credentials`` turns on its Basic authentication (407 without them); ``denied`` are
destination hosts it refuses with its upstream filter plugin (418, before connecting
anywhere).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

_CONNECT = re.compile(r"tunnel-requested (\S+)")
_SUPPORT = pathlib.Path(__file__).resolve().parent


class ForwardProxy:
    def __init__(self, *, credentials: str | None = None, denied: Iterable[str] = ()) -> None:
        self.credentials = credentials
        self.denied = tuple(denied)
        self._dir = pathlib.Path(tempfile.mkdtemp(prefix="forwardproxy-"))
        self.log_path = self._dir / "proxy.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy's URL, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        if not self.credentials:
            return self.url
        return f"http://{self.credentials}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ForwardProxy:
        port_file = self._dir / "port"
        args = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname=127.0.0.1",
            "--port=0",
            f"--port-file={port_file}",
            "--num-acceptors=1",
            "--num-workers=2",
            f"--log-file={self.log_path}",
            "--log-level=INFO",
        ]
        if self.credentials:
            args.append(f"--basic-auth={self.credentials}")
        plugins = ["support.proxyplugins.LogConnects"]
        if self.denied:
            plugins.append("proxy.plugin.FilterByUpstreamHostPlugin")
            args.append(f"--filtered-upstream-hosts={','.join(self.denied)}")
        args.append(f"--plugins={','.join(plugins)}")
        env = {
            **os.environ,
            "PYTHONPATH": f"{_SUPPORT.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        with (self._dir / "stderr").open("wb") as stderr:
            self._proc = subprocess.Popen(
                args,
                cwd=self._dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"proxy.py exited: {(self._dir / 'stderr').read_text()}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit():
                self.port = int(text)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"proxy.py did not start within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._proc = None

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connects(self) -> list[str]:
        """The ``host:port`` of every CONNECT it was asked for and let through its
        authentication, in order."""
        return _CONNECT.findall(self.log())

    def connects_to(self, target: str) -> int:
        return sum(1 for seen in self.connects() if seen == target)
