"""``python -m localcluster`` (``make controlplane``): run the control plane in the foreground.

Prints ``KUBECONFIG=<path>`` once the API server answers and stops everything it started
on Ctrl-C or SIGTERM. With ``--node`` (as root) a node runs too: pods with
``spec.nodeName: tokensync-node`` and ``image: tokensync.local/busybox:1``,
``imagePullPolicy: Never`` run on it (``make controlplane-node``).

The signal handler only appends to a list. It used to set a ``threading.Event``, whose
lock the handler could find already held by the same thread (inside ``Event.wait``, or by
the handler itself when two signals arrived together, as when make forwards a SIGTERM to
a process group that also got it): a deadlock, with etcd and kube-apiserver left running.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import types

from localcluster import BinariesError, ClusterError, LocalCluster, NodeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument(
        "--node", action="store_true", help="also run a node (containerd + kubelet; needs root)"
    )
    args = parser.parse_args(argv)
    received: list[int] = []

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        received.append(signum)  # takes no lock: see the module's docstring

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    try:
        cluster = LocalCluster(node=args.node)
        cluster.start()
    except (BinariesError, ClusterError, NodeError) as exc:
        print(f"control plane failed: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"control plane ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        print(f"API server: {cluster.server}; logs in {cluster.workdir}", file=sys.stderr)
        node = cluster.node
        if node is not None:
            print(
                f"node {node.name}: pods reach this machine at {node.host_ip}, the API server "
                f"at {node.apiserver_url}; logs in {node.workdir}",
                file=sys.stderr,
            )
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        processes = [*cluster.processes.values(), *(node.processes.values() if node else ())]
        checked = time.monotonic()
        while not received:
            time.sleep(0.1)
            if time.monotonic() - checked < 1.0:
                continue
            checked = time.monotonic()
            for proc in processes:
                if not proc.alive():
                    print(f"{proc.name} exited; read {proc.log_path}", file=sys.stderr)
                    return 1
    finally:
        print("stopping the control plane", file=sys.stderr)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
