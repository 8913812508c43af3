"""The node's network: a bridge of its own on the first free ``10.77.N.0/24``, and the CNI
configuration that puts pods on it.

The bridge holds the subnet's first address, the *host address*: the gateway of the pods,
the node's InternalIP (where the kubelet listens) and where pods reach servers on the host
(:mod:`localcluster.relay`). It is an address of this machine only: the bridge plugin runs
with ``isGateway: false`` and ``ipMasq: false``, so nothing enables IP forwarding or writes
an iptables rule, and traffic between the host and pods never leaves the machine.

The subnet is the first ``/24`` of ``10.77.0.0/16`` that no route of the machine overlaps,
so two nodes on one machine (two test runs) take different subnets.

The bridge's MAC address is set explicitly. A bridge created without one takes the lowest
MAC of its ports and changes it as pods come and go; pods keep the old one in their ARP
cache for the gateway, and their packets to the host vanish until it expires (seen: a
pod's connection to the host timed out after 134 s when another test's pods were deleted).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import pathlib
import secrets
import subprocess
from typing import Any

from localcluster.errors import NodeError

SUBNET_POOL = ipaddress.IPv4Network("10.77.0.0/16")


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default", "broadcast"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def link_exists(name: str) -> bool:
    return pathlib.Path(f"/sys/class/net/{name}").exists()


def links_of(bridge: str) -> list[str]:
    brif = pathlib.Path(f"/sys/class/net/{bridge}/brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def pick_subnet() -> ipaddress.IPv4Network:
    used = routes()
    for candidate in SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise NodeError(f"no free /24 in {SUBNET_POOL}: every one overlaps a route")


class Bridge:
    """A Linux bridge holding the host address of a free subnet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subnet: ipaddress.IPv4Network | None = None

    @property
    def host_ip(self) -> str:
        """The bridge's address: the pods' gateway and where they reach the host."""
        if self.subnet is None:
            raise NodeError(f"bridge {self.name} has no subnet yet")
        return str(self.subnet.network_address + 1)

    def create(self) -> None:
        self.subnet = pick_subnet()
        # Locally administered, unicast: 02:xx:xx:xx:xx:xx.
        mac = ":".join(["02", *(f"{b:02x}" for b in secrets.token_bytes(5))])
        for argv in (
            ("link", "add", "name", self.name, "type", "bridge"),
            ("link", "set", "dev", self.name, "address", mac),  # fixed: see the docstring
            ("addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.name),
            ("link", "set", self.name, "up"),
        ):
            result = ip(*argv)
            if result.returncode != 0:
                raise NodeError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")

    def conflist(self, network: str, ipam_dir: pathlib.Path) -> dict[str, Any]:
        """The CNI configuration: pods on this bridge, addresses from ``ipam_dir``."""
        return {
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.name,
                    "isGateway": False,  # the bridge has its address already: no forwarding
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet), "gateway": self.host_ip}]],
                        "routes": [{"dst": "0.0.0.0/0", "gw": self.host_ip}],
                        "dataDir": str(ipam_dir),
                    },
                }
            ],
        }

    def remove(self) -> None:
        """Delete the bridge and the pods' veth ends still attached to it."""
        if not link_exists(self.name):
            return
        for port in links_of(self.name):
            ip("link", "delete", port)
        ip("link", "delete", self.name)

    def leftovers(self) -> list[str]:
        if link_exists(self.name):
            return [f"link {self.name} (ports: {links_of(self.name)})"]
        return []
