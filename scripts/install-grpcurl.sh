#!/usr/bin/env bash
# Builds grpcurl (a gRPC client in Go, on grpc-go 1.83, which enforces ALPN and checks the
# server's name: another implementation than ours) from its Go module into a cache outside
# the repository and prints its path. Idempotent: does nothing when the cached binary
# already reports GRPCURL_VERSION.
#
#   scripts/install-grpcurl.sh            # -> ~/.cache/logplayer/bin/grpcurl
#   GRPCURL_VERSION=v1.9.4 scripts/install-grpcurl.sh
#
# Needs only Go (with the module proxy reachable); the first build takes a minute or two.
# tests/third_party.rs looks for grpcurl at $LOGPLAYER_GRPCURL, else at the path printed here.
set -euo pipefail

GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.4}"
BIN_DIR="${LOGPLAYER_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer/bin}"
GRPCURL="$BIN_DIR/grpcurl"

installed_version() {
    # `grpcurl -version` prints e.g. "grpcurl v1.9.4"; empty if missing or broken.
    [ -x "$GRPCURL" ] && "$GRPCURL" -version 2>&1 | awk '{ print $2 }' || true
}

if [ "$(installed_version)" = "$GRPCURL_VERSION" ]; then
    echo "$GRPCURL"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    echo "install-grpcurl.sh: 'go' not found; install Go (https://go.dev/dl/) first" >&2
    exit 1
}

mkdir -p "$BIN_DIR"
echo "install-grpcurl.sh: building grpcurl $GRPCURL_VERSION with $(go version) into $BIN_DIR" >&2
# Build into a temporary directory and move into place, so an interrupted build never leaves
# a half-written binary behind. The version is stamped as grpcurl's Makefile does.
# The temporary directory is in the cache's directory, so the move is a rename.
tmp="$(mktemp -d "$BIN_DIR/.grpcurl.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" go install \
    -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
    "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
mv -f "$tmp/grpcurl" "$GRPCURL"

got="$(installed_version)"
if [ "$got" != "$GRPCURL_VERSION" ]; then
    echo "install-grpcurl.sh: built $GRPCURL but it reports version '$got', expected $GRPCURL_VERSION" >&2
    exit 1
fi
echo "$GRPCURL"
