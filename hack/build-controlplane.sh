#!/usr/bin/env bash
# Build the local control plane (kube-apiserver, kube-controller-manager, kubectl, etcd)
# from Go modules into a cache directory outside the repository, once.
#
# Why a throwaway module: k8s.io/kubernetes is not meant to be required as a module; its
# go.mod replaces every staging module (k8s.io/api, ...) with ./staging/src/... paths. We
# generate the same replace list pointing at the published v0.X.Y versions instead.
set -euo pipefail

K8S_VERSION="${TOKENSYNC_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${TOKENSYNC_ETCD_VERSION:-v3.6.16}"
CACHE_ROOT="${TOKENSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync}"
DEST="$CACHE_ROOT/controlplane/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
BINARIES=(kube-apiserver kube-controller-manager kubectl etcd)

log() { printf '[controlplane-build] %s\n' "$*" >&2; }

complete() {
  for b in "${BINARIES[@]}"; do [[ -x "$DEST/$b" ]] || return 1; done
}

if complete; then
  echo "$DEST"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH; install Go or set KUBEBUILDER_ASSETS"; exit 2; }

mkdir -p "$CACHE_ROOT/controlplane"
WORK="$(mktemp -d "$CACHE_ROOT/controlplane/build.XXXXXX")"
LOGFILE="$CACHE_ROOT/controlplane/build.log"
trap 'rm -rf "$WORK"' EXIT
: >"$LOGFILE"
log "building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION from Go modules"
log "cache directory: $DEST (build log: $LOGFILE)"
log "the first build takes several minutes; later runs reuse the cache"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitTreeState=clean"

run() {
  # Run a build step, keep its output in the log, and fail with a pointer to the log.
  if ! "$@" >>"$LOGFILE" 2>&1; then
    log "ERROR: step failed: $*"
    log "last lines of $LOGFILE:"
    tail -n 25 "$LOGFILE" >&2
    exit 1
  fi
}

# --- Kubernetes ---------------------------------------------------------------------
mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
run go mod init tokensync.local/controlplane
log "[1/5] downloading k8s.io/kubernetes@$K8S_VERSION go.mod"
run go mod download -json "k8s.io/kubernetes@$K8S_VERSION"
GOMOD_FILE="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -f "$GOMOD_FILE" ]] || { log "ERROR: could not locate go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
# Every "k8s.io/x => ./staging/src/k8s.io/x" becomes "k8s.io/x => k8s.io/x $STAGING_VERSION".
mapfile -t STAGING < <(grep -E '=>[[:space:]]*\./staging/' "$GOMOD_FILE" | awk '{print ($1=="replace") ? $2 : $1}')
[[ ${#STAGING[@]} -gt 0 ]] || { log "ERROR: no staging replaces found in $GOMOD_FILE"; exit 1; }
log "[2/5] replacing ${#STAGING[@]} staging modules with their published $STAGING_VERSION"
for m in "${STAGING[@]}"; do
  go mod edit -replace "$m=$m@$STAGING_VERSION"
done
go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
log "[3/5] resolving dependencies"
run go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
log "[4/5] compiling kube-apiserver, kube-controller-manager, kubectl (the slow part)"
mkdir -p "$WORK/out"
run go build -trimpath -ldflags "$LDFLAGS" -o "$WORK/out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl

# --- etcd ---------------------------------------------------------------------------
# The etcd root module replaces its sibling modules with local paths, so it cannot be
# `go install`ed; a two-line main around etcdmain from the server module is equivalent.
log "[5/5] building etcd $ETCD_VERSION"
mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
run go mod init tokensync.local/etcd
cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
run go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
run go mod tidy
run go build -trimpath -ldflags "-s -w" -o "$WORK/out/etcd" .

rm -rf "$DEST.tmp" && mv "$WORK/out" "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
echo "$DEST"
