"""A real local Kubernetes control plane for tests, the demo and the benchmarks, and a real
node (containerd + kubelet) for the tests that run pods.

Not part of the product: it lives outside the ``tokensync`` package and is never shipped.
"""

from localcluster.binaries import Binaries, NodeBinaries, locate
from localcluster.cluster import LocalCluster
from localcluster.errors import BinariesError, ClusterError, NodeError
from localcluster.node import Node

__all__ = [
    "Binaries",
    "BinariesError",
    "ClusterError",
    "LocalCluster",
    "Node",
    "NodeBinaries",
    "NodeError",
    "locate",
]
