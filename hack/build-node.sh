#!/usr/bin/env bash
# Build the parts of a local Kubernetes node (tools/localcluster/node.py) into a cache
# directory outside the repository, once, and print that directory:
#   kubelet                      k8s.io/kubernetes, the control plane's version
#   containerd, ctr,             github.com/containerd/containerd/v2 (the kubelet of 1.37
#   containerd-shim-runc-v2      dropped containerd 1.x, the only one Debian 12 ships)
#   bridge, host-local,          github.com/containernetworking/plugins (CNI)
#   loopback
#   pause                        tools/localcluster/pause, our own sandbox program
# and makes sure two Debian packages are installed: runc (the OCI runtime the shim calls)
# and busybox-static (the base of the test image that tools/localcluster/images.py writes).
#
# The kubelet is built like hack/build-controlplane.sh builds the control plane: in a
# throwaway module whose replace list points every staging module at its published version.
set -euo pipefail

K8S_VERSION="${TOKENSYNC_K8S_VERSION:-v1.37.2}"
CONTAINERD_VERSION="${TOKENSYNC_CONTAINERD_VERSION:-v2.4.2}"
CNI_PLUGINS_VERSION="${TOKENSYNC_CNI_PLUGINS_VERSION:-v1.10.0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAUSE_SRC="$REPO_ROOT/tools/localcluster/pause"
CACHE_ROOT="${TOKENSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync}"
DEST="$CACHE_ROOT/node/k8s-${K8S_VERSION}-containerd-${CONTAINERD_VERSION}-cni-${CNI_PLUGINS_VERSION}"
BINARIES=(kubelet containerd ctr containerd-shim-runc-v2 cni/bridge cni/host-local cni/loopback)
DEBIAN_PACKAGES=(runc busybox-static)

log() { printf '[node-build] %s\n' "$*" >&2; }

mkdir -p "$CACHE_ROOT/node"
LOGFILE="$CACHE_ROOT/node/build.log"

run() {
  # Run a build step, keep its output in the log, and fail with the log's last lines.
  if ! "$@" >>"$LOGFILE" 2>&1; then
    log "ERROR: step failed: $*"
    log "last lines of $LOGFILE:"
    tail -n 25 "$LOGFILE" >&2
    exit 1
  fi
}

complete() {
  for b in "${BINARIES[@]}"; do [[ -x "$DEST/$b" ]] || return 1; done
}

missing_packages() {
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

pause_digest() {
  (cd "$PAUSE_SRC" && cat go.mod main.go) | sha256sum | cut -c1-16
}

NEED_BUILD=1
complete && NEED_BUILD=0
[[ $NEED_BUILD == 0 ]] || : >"$LOGFILE"

# --- Debian packages ----------------------------------------------------------------
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

# --- pause (small, rebuilt whenever its source changes) ------------------------------
build_pause() {
  local want
  want="$(pause_digest)"
  [[ -x "$DEST/pause" && "$(cat "$DEST/pause.source" 2>/dev/null)" == "$want" ]] && return 0
  log "building the pause program from $PAUSE_SRC"
  mkdir -p "$DEST"
  (cd "$PAUSE_SRC" && run env CGO_ENABLED=0 GOWORK=off go build -trimpath -ldflags "-s -w" -o "$DEST/pause.tmp" .)
  mv "$DEST/pause.tmp" "$DEST/pause"
  echo "$want" >"$DEST/pause.source"
}

if [[ $NEED_BUILD == 0 ]]; then
  build_pause
  echo "$DEST"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH"; exit 2; }

WORK="$(mktemp -d "$CACHE_ROOT/node/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "building kubelet $K8S_VERSION, containerd $CONTAINERD_VERSION, CNI plugins $CNI_PLUGINS_VERSION"
log "cache directory: $DEST (build log: $LOGFILE)"
export GOFLAGS=-mod=mod GOWORK=off
mkdir -p "$WORK/out/cni"

# --- kubelet ------------------------------------------------------------------------
log "[1/4] kubelet: resolving k8s.io/kubernetes@$K8S_VERSION with published staging modules"
mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
run go mod init tokensync.local/node
run go mod download -json "k8s.io/kubernetes@$K8S_VERSION"
GOMOD_FILE="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -f "$GOMOD_FILE" ]] || { log "ERROR: could not locate go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
mapfile -t STAGING < <(grep -E '=>[[:space:]]*\./staging/' "$GOMOD_FILE" | awk '{print ($1=="replace") ? $2 : $1}')
[[ ${#STAGING[@]} -gt 0 ]] || { log "ERROR: no staging replaces found in $GOMOD_FILE"; exit 1; }
for m in "${STAGING[@]}"; do go mod edit -replace "$m=$m@$STAGING_VERSION"; done
go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
run go get "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION"
log "[2/4] kubelet: compiling (the slow part)"
MINOR="$(cut -d. -f2 <<<"$K8S_VERSION")"
K8S_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${MINOR} -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitTreeState=clean"
run env CGO_ENABLED=0 go build -trimpath -ldflags "$K8S_LDFLAGS" -o "$WORK/out/kubelet" k8s.io/kubernetes/cmd/kubelet

# --- containerd ---------------------------------------------------------------------
# Its go.mod has no replace directives, so a plain requirement builds it as released.
# CGO off: the btrfs snapshotter (the one cgo part) drops out by its build constraint.
log "[3/4] containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
mkdir -p "$WORK/containerd" && cd "$WORK/containerd"
run go mod init tokensync.local/containerd
run go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION"
CTRD_PKG=github.com/containerd/containerd/v2
CTRD_LDFLAGS="-s -w -X $CTRD_PKG/version.Version=$CONTAINERD_VERSION -X $CTRD_PKG/version.Package=$CTRD_PKG"
run env CGO_ENABLED=0 go build -trimpath -tags no_btrfs -ldflags "$CTRD_LDFLAGS" -o "$WORK/out/" \
  "$CTRD_PKG/cmd/containerd" "$CTRD_PKG/cmd/ctr" "$CTRD_PKG/cmd/containerd-shim-runc-v2"

# --- CNI plugins --------------------------------------------------------------------
log "[4/4] CNI plugins $CNI_PLUGINS_VERSION (bridge, host-local, loopback)"
mkdir -p "$WORK/cni" && cd "$WORK/cni"
run go mod init tokensync.local/cni
run go get "github.com/containernetworking/plugins@$CNI_PLUGINS_VERSION"
CNI_PKG=github.com/containernetworking/plugins
run env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $CNI_PKG/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
  -o "$WORK/out/cni/" "$CNI_PKG/plugins/main/bridge" "$CNI_PKG/plugins/ipam/host-local" "$CNI_PKG/plugins/main/loopback"

rm -rf "$DEST.tmp" && mv "$WORK/out" "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
build_pause
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
echo "$DEST"
