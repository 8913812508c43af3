"""``python -m localcluster`` (``make controlplane``): run the control plane in the foreground.

Prints ``KUBECONFIG=<path>`` once the API server answers and stops everything it started
on Ctrl-C or SIGTERM.

The signal handler only appends to a list. It used to set a ``threading.Event``, whose
lock the handler could find already held by the same thread (inside ``Event.wait``, or by
the handler itself when two signals arrived together, as when make forwards a SIGTERM to
a process group that also got it): a deadlock, with etcd and kube-apiserver left running.
"""

from __future__ import annotations

import signal
import sys
import time
import types

from localcluster import BinariesError, ClusterError, LocalCluster


def main() -> int:
    received: list[int] = []

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        received.append(signum)  # takes no lock: see the module's docstring

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    try:
        cluster = LocalCluster()
        cluster.start()
    except (BinariesError, ClusterError) as exc:
        print(f"control plane failed: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"control plane ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        print(f"API server: {cluster.server}; logs in {cluster.workdir}", file=sys.stderr)
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        checked = time.monotonic()
        while not received:
            time.sleep(0.1)
            if time.monotonic() - checked < 1.0:
                continue
            checked = time.monotonic()
            for proc in cluster.processes.values():
                if not proc.alive():
                    print(f"{proc.name} exited; read {proc.log_path}", file=sys.stderr)
                    return 1
    finally:
        print("stopping the control plane", file=sys.stderr)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
