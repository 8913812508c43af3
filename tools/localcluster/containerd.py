"""containerd for a local node: its configuration, its readiness, images and last-resort
cleanup through ``ctr``.

The configuration keeps everything containerd owns under the node's directory (root, state,
sockets, runc's state, network namespaces, CDI and ``opt`` directories), pins the sandbox
image to our own pause image (:mod:`localcluster.images`), runs containers with the runc
that :func:`localcluster.binaries.locate_node` found, and reads no host configuration
(``imports = []``). Images are never pulled: :meth:`Containerd.import_image` loads OCI
archives written on this machine. See docs/decisions/0038 for why each setting is there.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

from localcluster import images
from localcluster.binaries import NodeBinaries
from localcluster.errors import NodeError

K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses


class Containerd:
    """One containerd, rooted at ``directory``, with its CNI configuration in ``cni_conf_dir``."""

    def __init__(
        self, directory: pathlib.Path, bins: NodeBinaries, *, cni_conf_dir: pathlib.Path
    ) -> None:
        self.directory = directory
        self.bins = bins
        self.cni_conf_dir = cni_conf_dir

    @property
    def socket(self) -> pathlib.Path:
        return self.directory / "containerd.sock"

    def config(self) -> str:
        d = self.directory
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        lines = [
            "version = 3",
            f"root = '{d / 'root'}'",
            f"state = '{d / 'state'}'",
            "imports = []",
            # The kubelet sets the OOM score of pods' sandboxes below ours, which takes
            # CAP_SYS_RESOURCE; without it containerd clamps the score instead of failing.
            "oom_score = 0",
            "[grpc]",
            f"  address = '{self.socket}'",
            "[ttrpc]",
            f"  address = '{self.socket}.ttrpc'",
            "[plugins.'io.containerd.cri.v1.images']",
            "  snapshotter = 'overlayfs'",
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]",
            f"  sandbox = '{images.PAUSE_IMAGE}'",
            f"[{runtime}]",
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",
            f"  cdi_spec_dirs = ['{d / 'cdi'}']",
            f"[{runtime}.cni]",
            f"  bin_dirs = ['{self.bins.cni}']",
            f"  conf_dir = '{self.cni_conf_dir}'",
            f"[{runtime}.containerd.runtimes.runc]",
            "  runtime_type = 'io.containerd.runc.v2'",
            f"  runtime_path = '{self.bins.shim}'",
            f"[{runtime}.containerd.runtimes.runc.options]",
            f"  BinaryName = '{self.bins.runc}'",
            f"  Root = '{d / 'runc'}'",
            "  SystemdCgroup = false",
            "[plugins.'io.containerd.grpc.v1.cri']",
            "  stream_server_address = '127.0.0.1'",
            "  stream_server_port = '0'",
            "[plugins.'io.containerd.internal.v1.opt']",
            f"  path = '{d / 'opt'}'",
            "[plugins.'io.containerd.image-verifier.v1.bindir']",
            f"  bin_dir = '{d / 'image-verifier'}'",
            "[plugins.'io.containerd.nri.v1.nri']",
            "  disable = true",
        ]
        return "\n".join(lines) + "\n"

    def argv(self) -> list[str]:
        """Write the configuration; the command line that runs containerd with it."""
        self.directory.mkdir(exist_ok=True)
        config = self.directory / "config.toml"
        config.write_text(self.config())
        # env(1) execs containerd with our binaries first on PATH (the shim finds itself
        # there), so the process we stop is containerd itself.
        path = f"PATH={self.bins.directory}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        return ["env", path, str(self.bins.containerd), f"--config={config}", "--log-level=info"]

    def ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bins.ctr), f"--address={self.socket}", "-n", K8S_NAMESPACE, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def ready(self) -> bool:
        return self.socket.exists() and self.ctr("version", timeout=5).returncode == 0

    def import_image(self, archive: pathlib.Path) -> None:
        """Load an OCI archive (see :mod:`localcluster.images`) for the kubelet to use."""
        result = self.ctr("images", "import", str(archive), timeout=120)
        if result.returncode != 0:
            raise NodeError(f"ctr images import {archive} failed: {result.stderr.strip()}")

    def remove_containers(self) -> None:
        """Kill and delete whatever runs in containerd after the kubelet is gone."""
        tasks = self.ctr("tasks", "list", "-q").stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task, timeout=10)
        containers = self.ctr("containers", "list", "-q").stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, timeout=30)

    def sandbox_ids(self) -> set[str]:
        """IDs of the pod sandboxes containerd made (its loopback network caches results
        under them in the host's CNI cache)."""
        return {
            p.name
            for p in self.directory.glob("*/io.containerd.grpc.v1.cri/sandboxes/*")
            if len(p.name) == 64
        }

    def shim_command_marker(self) -> str:
        """What the command line of this containerd's shims contains (its socket)."""
        return f"-address {self.socket}"
