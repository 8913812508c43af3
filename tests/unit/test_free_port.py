"""The test tooling's free ports: never the same one twice in a process, so two servers of
one test never race for a port (a CI run once lost an operator's health port that way)."""

from __future__ import annotations

import socket

from localcluster.process import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_handed_out_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
