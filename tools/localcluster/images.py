"""Container images made on this machine, for a local node that reaches no registry.

:func:`write_oci_archive` writes an OCI image layout as one tar file (``oci-layout``,
``index.json`` and ``blobs/sha256/...``: one gzip layer, its config and a manifest), the
form ``ctr images import`` reads. The output is deterministic: the same files give the
same digests, so importing twice is a no-op for containerd.

Two images are built from it: the pause (sandbox) image around our own pause program, and
a test image around a static busybox (Debian's busybox-static) with a few applet links.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pathlib
import tarfile
from collections.abc import Iterable, Sequence

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# containerd names an imported image after this annotation of its index entry.
CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"

PAUSE_IMAGE = "tokensync.local/pause:1"
BUSYBOX_IMAGE = "tokensync.local/busybox:1"
BUSYBOX_APPLETS = (
    "sh",
    "cat",
    "echo",
    "ls",
    "sleep",
    "env",
    "true",
    "false",
    "date",
    "wget",
    "nc",
    "tail",
    "timeout",
    "printf",
    "head",
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a layer: a file (from ``source`` or ``data``), a directory or a link."""

    path: str
    source: pathlib.Path | None = None
    data: bytes | None = None
    symlink: str | None = None
    mode: int = 0o755
    directory: bool = False


def _tar_info(
    name: str, *, kind: bytes, mode: int, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer tar with the given entries, parents created as needed."""
    buf = io.BytesIO()
    seen: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name = entry.path.strip("/")
            parts = name.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in seen:
                    seen.add(parent)
                    tar.addfile(_tar_info(parent, kind=tarfile.DIRTYPE, mode=0o755))
            seen.add(name)
            if entry.directory:
                tar.addfile(_tar_info(name, kind=tarfile.DIRTYPE, mode=entry.mode))
            elif entry.symlink is not None:
                tar.addfile(_tar_info(name, kind=tarfile.SYMTYPE, mode=0o777, link=entry.symlink))
            else:
                data = entry.data if entry.data is not None else _read(entry.source)
                info = _tar_info(name, kind=tarfile.REGTYPE, mode=entry.mode, size=len(data))
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read(source: pathlib.Path | None) -> bytes:
    if source is None:
        raise ValueError("a file entry needs source or data")
    return source.read_bytes()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_oci_archive(
    dest: pathlib.Path,
    *,
    name: str,
    entries: Sequence[Entry],
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    env: Sequence[str] = ("PATH=/bin",),
) -> str:
    """Write an OCI image layout tar for linux/amd64 at ``dest``; return the manifest digest."""
    layer = layer_tar(entries)
    compressed = gzip.compress(layer, mtime=0)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": list(entrypoint), "Cmd": list(cmd), "Env": list(env)},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
            "history": [{"created_by": "tokensync localcluster.images"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": _digest(compressed), "size": len(compressed)}
            ],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {CONTAINERD_NAME: name, OCI_REF_NAME: name.rsplit(":", 1)[-1]},
                }
            ],
        }
    )
    files: list[tuple[str, bytes]] = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))]
    files += [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (compressed, config, manifest)]
    files.append(("index.json", index))
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info("blobs", kind=tarfile.DIRTYPE, mode=0o755))
        tar.addfile(_tar_info("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755))
        for path, data in files:
            tar.addfile(
                _tar_info(path, kind=tarfile.REGTYPE, mode=0o644, size=len(data)), io.BytesIO(data)
            )
    return _digest(manifest)


def pause_image(pause_binary: pathlib.Path, dest: pathlib.Path, name: str = PAUSE_IMAGE) -> str:
    """The sandbox image: our static pause program as ``/pause``, its entrypoint."""
    return write_oci_archive(
        dest,
        name=name,
        entries=[Entry("pause", source=pause_binary)],
        entrypoint=["/pause"],
        env=(),
    )


def busybox_image(
    busybox_binary: pathlib.Path,
    dest: pathlib.Path,
    name: str = BUSYBOX_IMAGE,
    applets: Sequence[str] = BUSYBOX_APPLETS,
) -> str:
    """A test image: a static busybox as ``/bin/busybox`` and links for ``applets``."""
    entries = [Entry("bin/busybox", source=busybox_binary)]
    entries += [Entry(f"bin/{applet}", symlink="busybox") for applet in applets]
    entries += [Entry("tmp", directory=True, mode=0o1777)]
    return write_oci_archive(dest, name=name, entries=entries, entrypoint=[], cmd=["/bin/sh"])
