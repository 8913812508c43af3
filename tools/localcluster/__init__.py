"""A real local Kubernetes control plane for tests, the demo and the benchmarks.

Not part of the product: it lives outside the ``tokensync`` package and is never shipped.
"""

from localcluster.binaries import Binaries, BinariesError, locate
from localcluster.cluster import ClusterError, LocalCluster

__all__ = ["Binaries", "BinariesError", "ClusterError", "LocalCluster", "locate"]
