#!/usr/bin/env bash
# Builds the helm v3 CLI from its Go module into a cache outside the repository and prints
# its path. Idempotent: does nothing when the cached binary already reports HELM_VERSION.
#
#   scripts/install-helm.sh            # -> ~/.cache/logplayer/bin/helm
#   HELM_VERSION=v3.16.4 scripts/install-helm.sh
#
# Needs only Go (with the module proxy reachable); the first build takes a few minutes.
# tests/chart.rs looks for helm at $LOGPLAYER_HELM, else at the path printed here.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
BIN_DIR="${LOGPLAYER_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer/bin}"
HELM="$BIN_DIR/helm"
# Written next to the binary after a successful build. Bump RECIPE when the build below
# changes, so that binaries built the old way are rebuilt.
STAMP="$HELM.stamp"
RECIPE=2

installed_version() {
    # `helm version --template` prints e.g. v3.22.0; empty if the binary is missing or broken.
    [ -x "$HELM" ] && "$HELM" version --client --template '{{ .Version }}' 2>/dev/null || true
}

if [ "$(installed_version)" = "$HELM_VERSION" ] &&
    [ "$(cat "$STAMP" 2>/dev/null || true)" = "$HELM_VERSION recipe $RECIPE" ]; then
    echo "$HELM"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    echo "install-helm.sh: 'go' not found; install Go (https://go.dev/dl/) first" >&2
    exit 1
}

mkdir -p "$BIN_DIR"
echo "install-helm.sh: building helm $HELM_VERSION with $(go version) into $BIN_DIR (takes a few minutes)" >&2
# The Kubernetes version helm assumes without a cluster (`helm template`, `helm lint`, checked
# against a chart's kubeVersion) is stamped at build time from the client-go it is built with,
# as helm's Makefile does (client-go v0.37.x -> 1.37); unstamped, it would be 1.20.
gomod="$(go list -m -f '{{ .GoMod }}' "helm.sh/helm/v3@$HELM_VERSION")"
client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
if ! [[ "$client_go" =~ ^v0\.([0-9]+)\. ]]; then
    echo "install-helm.sh: cannot read the k8s.io/client-go version from $gomod (got '$client_go')" >&2
    exit 1
fi
k8s_major=1
k8s_minor="${BASH_REMATCH[1]}"
# Build into a temporary directory and move into place, so an interrupted build never leaves
# a half-written binary behind. Version metadata is stamped the way helm's Makefile does.
# The temporary directory is in the cache's directory, so the move is a rename.
tmp="$(mktemp -d "$BIN_DIR/.helm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" go install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv -f "$tmp/helm" "$HELM"

got="$(installed_version)"
if [ "$got" != "$HELM_VERSION" ]; then
    echo "install-helm.sh: built $HELM but it reports version '$got', expected $HELM_VERSION" >&2
    exit 1
fi
echo "$HELM_VERSION recipe $RECIPE" > "$STAMP"
echo "$HELM"
