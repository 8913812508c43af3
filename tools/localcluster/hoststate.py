"""What a node changes on the machine outside its own directory, and how it is undone.

The kubelet and containerd were written to own a machine: whatever their configuration
says, they set kernel settings, create host paths, make cgroups, leave shims and mounts
behind. A test node shares the machine with other test runs, so :class:`localcluster.node.Node`
records what it finds first and puts it back at stop. This module holds that bookkeeping:

- :class:`HostChanges`: the kernel settings the kubelet changes at start, recorded and
  restored; the host paths containerd and the kubelet create whatever they are told, pruned
  of the node's entries (and removed when they did not exist before).
- :class:`CgroupRoot`: the kubelet's ``cgroupRoot``, made in every hierarchy first (the
  kubelet wants it to exist) and removed at stop, with the processes still in it.
- :func:`kill_until_gone` and :func:`unmount_under`: the last resort for what outlives
  the kubelet and containerd (shims by design, containers that outlive their shim, mounts
  of a sandbox whose teardown failed).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable

# The kubelet sets these at start (container_manager_linux.go, setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Created by containerd or the kubelet whatever their configuration says.
HOST_PATHS = (
    pathlib.Path("/run/containerd"),
    pathlib.Path("/var/log/containers"),
    pathlib.Path("/var/lib/cni"),
    pathlib.Path("/var/lib/kubelet"),  # device-plugins/kubelet.sock ignores --root-dir
)


# -- host inspection ------------------------------------------------------------------


def mount_points() -> list[str]:
    points = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split(" ")[4]
        points.append(field.encode().decode("unicode_escape"))  # octal escapes: \040 etc.
    return points


def cgroup_hierarchies() -> list[pathlib.Path]:
    """Every mounted cgroup hierarchy: the v1 controllers and the v2 (unified) tree."""
    found = []
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        _dev, point, fstype, *_ = line.split(" ")
        if fstype in ("cgroup", "cgroup2"):
            found.append(pathlib.Path(point))
    return found


def pids_with(needle: str) -> list[int]:
    """Processes whose command line contains ``needle``."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(proc.name))
    return pids


def read_sysctl(name: str) -> str | None:
    try:
        return (pathlib.Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def listening(path: pathlib.Path) -> bool:
    """Whether a server still accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def require_root(error: type[Exception]) -> None:
    if os.geteuid() != 0:
        raise error("a node needs root: it mounts, makes cgroups and network links")


# -- last resorts ---------------------------------------------------------------------


def kill_until_gone(find: Callable[[], Iterable[int]], attempts: int = 50) -> None:
    """SIGKILL whatever ``find`` names until it names nothing (or ``attempts`` run out)."""
    for _ in range(attempts):
        pids = set(find())
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def mounts_under(prefix: pathlib.Path) -> list[str]:
    root = str(prefix)
    return [m for m in mount_points() if m == root or m.startswith(root + "/")]


def unmount_under(prefix: pathlib.Path) -> None:
    """Lazily unmount everything mounted at or below ``prefix``, deepest first."""
    for _ in range(10):
        points = mounts_under(prefix)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# -- kernel settings and host paths ---------------------------------------------------


class HostChanges:
    """Kernel settings and host paths as they were before a node started."""

    def __init__(self) -> None:
        self._sysctls: dict[str, str] = {}
        self._paths_before: dict[pathlib.Path, bool] = {}

    def record(self) -> None:
        for name in KERNEL_TUNABLES:
            value = read_sysctl(name)
            if value is not None:
                self._sysctls[name] = value
        self._paths_before = {p: p.exists() for p in HOST_PATHS}

    def restore(self, is_ours: Callable[[pathlib.Path], bool]) -> None:
        """Write back the kernel settings; remove the node's entries (``is_ours``) from the
        host paths, and the directories that existed only because of it."""
        for name, value in self._sysctls.items():
            if read_sysctl(name) != value:
                with contextlib.suppress(OSError):
                    (pathlib.Path("/proc/sys") / name).write_text(value)
        for path, existed in self._paths_before.items():
            _prune(path, is_ours, remove_root=not existed)

    def leftovers(self, is_ours: Callable[[pathlib.Path], bool]) -> list[str]:
        """The node's files still in the host paths, and host directories it created that
        are still there empty. Another node on the machine (another test run) may be using
        the same directories meanwhile: its files are not leftovers of this one."""
        found = []
        for root, existed in self._paths_before.items():
            files = [p for p in root.rglob("*") if not p.is_dir()] if root.is_dir() else []
            found += [f"host path {p}" for p in files if is_ours(p)]
            if not existed and root.exists() and not files:
                found.append(f"host path {root} (did not exist before)")
        found += [
            f"sysctl {k}={read_sysctl(k)} (was {v})"
            for k, v in self._sysctls.items()
            if read_sysctl(k) != v
        ]
        return found


def _prune(
    root: pathlib.Path, is_ours: Callable[[pathlib.Path], bool], *, remove_root: bool
) -> None:
    """Remove the files ``is_ours`` claims from a host directory, then emptied directories."""
    if not root.is_dir():
        return
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = pathlib.Path(dirpath) / name
            if is_ours(path):
                with contextlib.suppress(OSError):
                    path.unlink()
        if remove_root or pathlib.Path(dirpath) != root:
            with contextlib.suppress(OSError):
                pathlib.Path(dirpath).rmdir()  # only if empty


def is_dead_socket(path: pathlib.Path) -> bool:
    """A unix socket nobody listens on any more (a shim's, the kubelet's device plugin's)."""
    try:
        return stat.S_ISSOCK(path.lstat().st_mode) and not listening(path)
    except OSError:
        return False


# -- cgroups --------------------------------------------------------------------------


class CgroupRoot:
    """The kubelet's ``cgroupRoot`` (``/<name>``) in every mounted hierarchy."""

    def __init__(self, name: str) -> None:
        self.path = "/" + name.strip("/")

    def _dirs(self) -> list[pathlib.Path]:
        return [h / self.path.lstrip("/") for h in cgroup_hierarchies()]

    def make(self) -> None:
        for directory in self._dirs():
            directory.mkdir(exist_ok=True)

    def pids(self) -> set[int]:
        pids: set[int] = set()
        for root in self._dirs():
            if not root.is_dir():
                continue
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def remove(self) -> None:
        for root in self._dirs():
            if not root.is_dir():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in [*dirs, root]:
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def leftovers(self) -> list[str]:
        return [f"cgroup {d}" for d in self._dirs() if d.exists()]
