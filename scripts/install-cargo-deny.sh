#!/usr/bin/env bash
# Builds cargo-deny (licenses, bans, sources and advisories of our dependency graph) from
# crates.io into a cache outside the repository and prints its path. Idempotent: does
# nothing when the cached binary already reports CARGO_DENY_VERSION.
#
#   scripts/install-cargo-deny.sh        # -> ~/.cache/logplayer/bin/cargo-deny
#
# Needs only cargo; the first build takes a few minutes. `.ci/run` runs it with deny.toml.
set -euo pipefail

CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
ROOT="${LOGPLAYER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer}/cargo-deny-$CARGO_DENY_VERSION"
BIN="$ROOT/bin/cargo-deny"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION\$"; then
    echo "$BIN"
    exit 0
fi
echo "install-cargo-deny.sh: building cargo-deny $CARGO_DENY_VERSION into $ROOT (takes a few minutes)" >&2
# Its own target directory, so this build never touches the project's.
CARGO_TARGET_DIR="$ROOT/target" cargo install --quiet --locked --root "$ROOT" \
    --version "$CARGO_DENY_VERSION" cargo-deny >&2
rm -rf "$ROOT/target"
echo "$BIN"
