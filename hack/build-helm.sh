#!/usr/bin/env bash
# Build helm from its Go module into a cache directory outside the repository, once.
# Prints the directory that holds the `helm` binary on stdout; progress goes to stderr.
#
# The chart tests (tests/e2e/test_helm.py) lint and render deploy/helm/tokensync with it.
set -euo pipefail

HELM_VERSION="${TOKENSYNC_HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${TOKENSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync}"
DEST="$CACHE_ROOT/tools/helm-${HELM_VERSION}"

log() { printf '[helm-build] %s\n' "$*" >&2; }

if [[ -x "$DEST/helm" ]]; then
  echo "$DEST"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH; install Go to build helm"; exit 2; }

mkdir -p "$CACHE_ROOT/tools"
WORK="$(mktemp -d "$CACHE_ROOT/tools/helm-build.XXXXXX")"
LOGFILE="$CACHE_ROOT/tools/helm-build.log"
trap 'rm -rf "$WORK"' EXIT
: >"$LOGFILE"
log "building helm $HELM_VERSION from its Go module into $DEST (log: $LOGFILE)"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
# What helm's own Makefile stamps in: its version, and the Kubernetes version that
# `helm template` and `helm lint` assume (from the k8s.io/client-go it is built with;
# without it they assume v1.20 and refuse charts needing anything newer).
GOMOD_FILE="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" 2>>"$LOGFILE" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -f "$GOMOD_FILE" ]] || { log "ERROR: could not download helm.sh/helm/v3@${HELM_VERSION} (see $LOGFILE)"; exit 1; }
CLIENT_GO="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$GOMOD_FILE")"
K8S_MINOR="$(cut -d. -f2 <<<"${CLIENT_GO#v}")"
[[ -n "$K8S_MINOR" ]] || { log "ERROR: no k8s.io/client-go version in $GOMOD_FILE"; exit 1; }
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  LDFLAGS+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
done
if ! GOBIN="$WORK/bin" go install -trimpath -ldflags "$LDFLAGS" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >>"$LOGFILE" 2>&1; then
  log "ERROR: go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} failed; last lines of $LOGFILE:"
  tail -n 25 "$LOGFILE" >&2
  exit 1
fi

rm -rf "$DEST.tmp" && mv "$WORK/bin" "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
log "done: $DEST/helm"
echo "$DEST"
