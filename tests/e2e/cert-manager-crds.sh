#!/usr/bin/env bash
# Fetch cert-manager's CRDs (once: Go's module cache keeps them) from the Go module proxy,
# where cert-manager publishes its source with the generated CRDs in deploy/crds/.
# The e2e suite installs the Certificate CRD to check what the operator writes in
# `spec.tls.mode: CertManager` against cert-manager's own schema.
#
# stdout: exactly one line, the directory holding the CRDs.
# Environment: CERT_MANAGER_VERSION (default v1.21.2); GOPROXY, GOMODCACHE as usual.
set -euo pipefail
V=${CERT_MANAGER_VERSION:-v1.21.2}
GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; } || {
	echo "cert-manager-crds: go not found in PATH" >&2
	exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir=$(cd "$tmp" && GOWORK=off "$GO" mod download -json "github.com/cert-manager/cert-manager@$V" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
crd="$dir/deploy/crds/cert-manager.io_certificates.yaml"
[ -f "$crd" ] || {
	echo "cert-manager-crds: no $crd in github.com/cert-manager/cert-manager@$V" >&2
	exit 1
}
echo "$dir/deploy/crds"
