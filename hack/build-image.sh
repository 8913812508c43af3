#!/usr/bin/env bash
# Build the operator image from the project's Dockerfile without a Docker daemon, and print
# the path of an OCI archive of it (issue 15, docs/decisions/0039-image-without-a-daemon.md):
#
#   1. a local stand-in for the Dockerfile's base (python:3.11-slim, from a registry these
#      machines cannot reach): a minimal Debian 12 root filesystem made by mmdebstrap, with
#      Debian's Python 3.11, python3-venv, a `python` command, and pip, setuptools and wheel
#      installed from pinned, hash-checked wheels so that the Dockerfile's `pip wheel`,
#      `pip --python` and `pip uninstall` steps work as they do on the official image;
#      cached in $CACHE/image/base/<recipe key>/ and as an image in buildah's storage;
#   2. buildah (no daemon) builds the shipped Dockerfile with
#      --build-arg PYTHON_IMAGE=<that base>, tagged $TOKENSYNC_IMAGE
#      (tokensync.local/tokensync:dev by default);
#   3. a smoke test: `tokensync --help` and `tokensync run --help` run inside the image as
#      its user, 65532:65532;
#   4. an OCI archive of it, named for containerd (`ctr images import`, which is what
#      localcluster's Node.import_image runs), in $CACHE/image/out/.
#
# Nothing is rebuilt when nothing the image is made from has changed: the archive is keyed
# by the base recipe, the Dockerfile, the build context and this script. Progress goes to
# stderr and the build log; the archive's path is the last line on stdout.
#
# Installs Debian's buildah and mmdebstrap when missing. Environment:
#   TOKENSYNC_CACHE_DIR        cache root (default ~/.cache/tokensync)
#   TOKENSYNC_IMAGE            image name (default tokensync.local/tokensync:dev)
#   TOKENSYNC_BUILDAH_DRIVER   buildah storage driver: overlay (default) or vfs
#   TOKENSYNC_IMAGE_CA_BUNDLE  CA bundle mounted read-only over the build containers'
#                              /etc/ssl/certs/ca-certificates.crt while RUN steps run, so
#                              pip trusts what this machine trusts (default: this machine's
#                              bundle; empty: none). It is never part of the image.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${TOKENSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync}"
IMAGE_ROOT="$CACHE_ROOT/image"
IMAGE="${TOKENSYNC_IMAGE:-tokensync.local/tokensync:dev}"
DRIVER="${TOKENSYNC_BUILDAH_DRIVER:-overlay}"
CA_BUNDLE="${TOKENSYNC_IMAGE_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
DEBIAN_PACKAGES=(buildah mmdebstrap)

# --- the base recipe: every input of the base image is in this block -----------------
BASE_RECIPE_VERSION=1
SUITE=bookworm
BASE_INCLUDE=ca-certificates,netbase,python3,python3-venv,python-is-python3
# What Debian's slim images leave out too (the copyright files stay).
BASE_DPKG_OPTS=(
  'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/locale/*'
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
)
# The installers the official image ships, which the Dockerfile's last stage uninstalls.
# wheel 0.45.1 is the last without a dependency (0.46 needs packaging, which the
# Dockerfile's uninstall would leave behind).
BASE_WHEELS=(
  "pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
  "setuptools==84.2.1 --hash=sha256:ca140b45d5325a9478f880e351484f62fef15f336462e449ca0c03c873d589c2"
  "wheel==0.45.1 --hash=sha256:708e7481cc80179af0e556bbf0cc00b8444c7321e2700b8d8580231d13017248"
)
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
BASE_RECIPE="v$BASE_RECIPE_VERSION $SUITE essential merged-usr $BASE_INCLUDE ${BASE_DPKG_OPTS[*]} ${BASE_WHEELS[*]} ${BASE_ENV[*]} cmd=python3"
BASE_KEY="$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)"
BASE_IMAGE="tokensync.local/python:3.11-$SUITE-$BASE_KEY"
BASE_DIR="$IMAGE_ROOT/base/$BASE_KEY"

STARTED="$(date +%s%N)"
log() { printf '[image-build] %5.1fs %s\n' "$(( ($(date +%s%N) - STARTED) / 1000000 ))e-3" "$*" >&2; }

mkdir -p "$IMAGE_ROOT/out"
LOGFILE="$IMAGE_ROOT/build.log"
# One build at a time: two would race on buildah's storage and on the archive.
exec 9>"$IMAGE_ROOT/lock"
flock 9

run() {
  # Run a build step, keep its output in the log, and fail with the log's last lines.
  if ! "$@" >>"$LOGFILE" 2>&1; then
    log "ERROR: step failed: $*"
    log "last lines of $LOGFILE:"
    tail -n 25 "$LOGFILE" >&2
    exit 1
  fi
}

# --- is the archive of these exact inputs already there? -----------------------------
# The build context is what .dockerignore lets in (pyproject.toml, README.md,
# constraints.txt, operator/ without caches); hashing a superset only costs a rebuild.
inputs_key() {
  (
    cd "$REPO_ROOT"
    printf '%s\n' "$BASE_RECIPE" "$IMAGE" "$CA_BUNDLE"
    sha256sum hack/build-image.sh Dockerfile .dockerignore pyproject.toml README.md constraints.txt
    find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
      ! -path '*/.mypy_cache/*' -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}
KEY="$(inputs_key)"
ARCHIVE="$IMAGE_ROOT/out/tokensync-$KEY.oci.tar"
if [[ -s "$ARCHIVE" ]]; then
  echo "$ARCHIVE"
  exit 0
fi
: >"$LOGFILE"

# --- Debian packages -----------------------------------------------------------------
[[ $EUID -eq 0 ]] || { log "ERROR: run as root (mmdebstrap and buildah's storage need it)"; exit 2; }
missing_packages() {
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
mapfile -t MISSING < <(missing_packages)
if [[ ${#MISSING[@]} -gt 0 ]]; then
  log "installing Debian packages: ${MISSING[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet: update once, then try again.
  if ! apt-get install -y --no-install-recommends "${MISSING[@]}" >>"$LOGFILE" 2>&1; then
    run apt-get update
    run apt-get install -y --no-install-recommends "${MISSING[@]}"
  fi
fi

# buildah's storage lives in the cache; its run root (locks, mount state) is per run.
STORAGE="$IMAGE_ROOT/storage-$DRIVER"
WORK="$(mktemp -d "$IMAGE_ROOT/work.XXXXXX")"
CONTAINER=""
cleanup() {
  if [[ -n $CONTAINER ]]; then bah rm "$CONTAINER" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
bah() { buildah --root "$STORAGE" --runroot "$WORK/run" --storage-driver "$DRIVER" "$@"; }
# Every buildah command sets up its network backend, which would create /etc/cni/net.d;
# its configuration directory goes to the cache instead (chroot isolation uses none).
printf '[network]\nnetwork_config_dir = "%s"\n' "$IMAGE_ROOT/cni" >"$IMAGE_ROOT/containers.conf"
export CONTAINERS_CONF="$IMAGE_ROOT/containers.conf"

# --- 1. the base ---------------------------------------------------------------------
build_rootfs() {
  local wheels="$WORK/wheels" pip=()
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then pip=("$REPO_ROOT/.venv/bin/python" -m pip); else pip=(python3 -m pip); fi
  mkdir -p "$wheels"
  printf '%s\n' "${BASE_WHEELS[@]}" >"$WORK/base-wheels.txt"
  run "${pip[@]}" download --quiet --no-deps --only-binary :all: --require-hashes \
    -r "$WORK/base-wheels.txt" -d "$wheels"
  # The pip wheel installs itself (python pip-X.whl/pip): nothing is fetched in the chroot.
  local install w
  install="chroot \"\$1\" env -i PATH=/usr/local/bin:/usr/bin:/bin python3 /tmp/wheels/$(cd "$wheels" && echo pip-*.whl)/pip"
  install+=" install --no-index --no-cache-dir --no-compile --disable-pip-version-check --root-user-action=ignore"
  for w in "$wheels"/*.whl; do install+=" /tmp/wheels/${w##*/}"; done
  local dpkgopts=()
  for opt in "${BASE_DPKG_OPTS[@]}"; do dpkgopts+=("--dpkgopt=$opt"); done
  mkdir -p "$BASE_DIR"
  # Debian marks its Python as externally managed (PEP 668); this base is a stand-in for
  # an image whose own pip manages /usr/local, so the marker goes, and pip, setuptools and
  # wheel go to /usr/local, where the Dockerfile's `pip uninstall` removes them again.
  run mmdebstrap --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$BASE_INCLUDE" "${dpkgopts[@]}" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp $wheels/*.whl \"\$1/tmp/wheels/\"" \
    --customize-hook="$install" \
    --customize-hook='rm -rf "$1/tmp/wheels"' \
    "$SUITE" "$WORK/rootfs.tar"
  mv "$WORK/rootfs.tar" "$BASE_DIR/rootfs.tar"
  printf '%s\n' "$BASE_RECIPE" >"$BASE_DIR/recipe.txt"
}

if [[ -z "$(bah images --quiet "$BASE_IMAGE" 2>/dev/null)" ]]; then
  if [[ ! -s "$BASE_DIR/rootfs.tar" ]]; then
    log "[1/4] base $BASE_IMAGE: Debian $SUITE root filesystem with Python 3.11 (mmdebstrap)"
    build_rootfs
  else
    log "[1/4] base $BASE_IMAGE: from the cached root filesystem"
  fi
  CONTAINER="$(bah from scratch)"
  run bah add "$CONTAINER" "$BASE_DIR/rootfs.tar" /
  envopts=()
  for e in "${BASE_ENV[@]}"; do envopts+=(--env "$e"); done
  run bah config "${envopts[@]}" --cmd python3 \
    --label "org.opencontainers.image.description=local stand-in for python:3.11-slim: Debian $SUITE, recipe $BASE_KEY (hack/build-image.sh)" \
    "$CONTAINER"
  run bah commit --quiet --rm "$CONTAINER" "$BASE_IMAGE"
  CONTAINER=""
else
  log "[1/4] base $BASE_IMAGE: cached"
fi

# --- 2. the Dockerfile, as users build it, on that base -------------------------------
# chroot isolation: RUN steps share the host's network (no CNI network, no bridge, no
# iptables or ip_forward change) and need no OCI runtime; --pull-never: no registry.
log "[2/4] building $IMAGE from the Dockerfile (buildah $(buildah --version | cut -d' ' -f3), $DRIVER storage)"
volumes=()
if [[ -n $CA_BUNDLE ]]; then
  [[ -r $CA_BUNDLE ]] || { log "ERROR: TOKENSYNC_IMAGE_CA_BUNDLE=$CA_BUNDLE is not readable"; exit 2; }
  volumes=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
run bah build --isolation chroot --pull-never "${volumes[@]}" \
  --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --file "$REPO_ROOT/Dockerfile" --tag "$IMAGE" "$REPO_ROOT"

# --- 3. it runs, as the user the Deployment expects -------------------------------------
log "[3/4] smoke test: tokensync --help and tokensync run --help as the image's user"
user="$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
[[ $user == "65532:65532" ]] || { log "ERROR: the image's user is '$user', not 65532:65532"; exit 1; }
CONTAINER="$(bah from --pull-never "$IMAGE")"
run bah run --isolation chroot --user "$user" "$CONTAINER" -- tokensync --help
run bah run --isolation chroot --user "$user" "$CONTAINER" -- tokensync run --help
run bah rm "$CONTAINER"
CONTAINER=""

# --- 4. the OCI archive ----------------------------------------------------------------
# An OCI layout names an image by its tag only (org.opencontainers.image.ref.name);
# containerd names an imported image after io.containerd.image.name, which we add.
log "[4/4] exporting an OCI archive"
run bah push --quiet "$IMAGE" "oci:$WORK/layout:$IMAGE"
run python3 - "$WORK/layout/index.json" "$IMAGE" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {})["io.containerd.image.name"] = name
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"))
EOF
run tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -C "$WORK/layout" -cf "$ARCHIVE.tmp" oci-layout index.json blobs
mv "$ARCHIVE.tmp" "$ARCHIVE"
# Keep one archive and the images still named: earlier builds' go.
find "$IMAGE_ROOT/out" -name 'tokensync-*.oci.tar' ! -path "$ARCHIVE" -delete
bah rmi --prune >>"$LOGFILE" 2>&1 || true
size="$(bah images --format '{{.Size}}' "$IMAGE" | head -n1)"
log "done: $IMAGE ($size unpacked, $(du -h "$ARCHIVE" | cut -f1) archive) in $ARCHIVE"
echo "$ARCHIVE"
