"""What goes wrong starting a local cluster, one exception per part, each message naming the
cause and the log file to read."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The control plane did not come up; the message names the cause and the log file."""


class BinariesError(RuntimeError):
    """The control plane's or the node's binaries could not be found or built."""


class NodeError(RuntimeError):
    """The node did not come up, or could not be torn down; the message says why."""
