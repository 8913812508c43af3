"""A TCP relay from the node's host address to a server on loopback.

Pods reach the host only at the bridge address (:mod:`localcluster.hostnet`), while the API
server and the tests' servers listen on 127.0.0.1 and should stay there: a server bound to
0.0.0.0 would be reachable from beyond the machine, and a loopback address cannot be routed
to from a pod's network namespace without kernel settings (``route_localnet``) and NAT
rules that outlive a killed test. So the node relays: :class:`Relay` listens on the host
address (an address of this machine that only it and the node's pods use) and pipes every
connection, byte for byte, to the loopback server. TLS passes through untouched, so a client
in a pod verifies the real server's certificate (which must then name the host address:
the API server's does once a node runs, see ``LocalCluster.serve_also_on``).

It runs in threads of the process that started the node: enough for an operator's watches
and a test's requests, and it dies with that process.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable

_CHUNK = 65536


class Relay:
    """Forward connections on ``(listen_host, listen_port)`` to ``(target_host, target_port)``."""

    def __init__(
        self,
        listen_host: str,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.listen_host = listen_host
        self.target = (target_host, target_port)
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._acceptor: threading.Thread | None = None
        self._pipes: list[threading.Thread] = []
        self.port = 0

    def start(self) -> Relay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self._listen_port))
        listener.listen(64)
        listener.settimeout(0.2)  # the accept loop checks for stop() this often
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = self._spawn(self._accept_loop, f"relay-{self.port}")
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)  # no new connections after this
            self._acceptor = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._pipes:
            thread.join(timeout=5)
        self._pipes = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    @staticmethod
    def _spawn(target: Callable[..., None], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            self._pipes = [t for t in self._pipes if t.is_alive()]
            self._pipes.append(self._spawn(self._pipe, f"relay-{self.port}-conn", client, upstream))

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until both sides have closed (half-closes passed on)."""
        other = {client: upstream, upstream: client}
        reading = [client, upstream]
        try:
            while reading and not self._stopping.is_set():
                ready, _, _ = select.select(reading, [], [], 0.5)
                for sock in ready:
                    data = sock.recv(_CHUNK)
                    if data:
                        other[sock].sendall(data)
                        continue
                    reading.remove(sock)
                    with contextlib.suppress(OSError):
                        other[sock].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            client.close()
            upstream.close()
