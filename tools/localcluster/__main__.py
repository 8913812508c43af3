"""``python -m localcluster`` (``make controlplane``): run the control plane in the foreground.

Prints ``KUBECONFIG=<path>`` once the API server answers and stops everything it started
on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import types

from localcluster import BinariesError, ClusterError, LocalCluster


def main() -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

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
        while not stop.wait(1.0):
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
