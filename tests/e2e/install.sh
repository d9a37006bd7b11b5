#!/usr/bin/env bash
# Build (once) and cache the control-plane binaries used by the e2e tests:
#   kube-apiserver, kube-controller-manager, kubectl  (Go module k8s.io/kubernetes)
#   etcd                                               (Go module go.etcd.io/etcd/server/v3)
#
# They are built from the Go module proxy only (no release tarballs, no Docker)
# into
#   ${LOGPLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer}/k8s/<K8S_VERSION>/bin/
# which is laid out like controller-runtime's envtest KUBEBUILDER_ASSETS folder.
#
# Binaries already there whose `--version` matches are reused; anything missing or
# of the wrong version is rebuilt in a temporary directory on the same file system
# and then renamed into place, so a half-built binary is never left in bin/.
#
# stdout: exactly one line, the bin directory.  Progress and timings: stderr.
#
# Environment:
#   K8S_VERSION      Kubernetes release            (default v1.37.2)
#   ETCD_VERSION     etcd release                  (default v3.7.3; k8s 1.37 pins etcd 3.7.0)
#   LOGPLAYER_CACHE  cache root                    (default $XDG_CACHE_HOME/logplayer or ~/.cache/logplayer)
#   E2E_BUILD_SEPARATELY=1  build the three kube binaries in three `go build`
#                    invocations instead of one (only useful to measure each one).
#   GOFLAGS, GOPROXY, GOCACHE, GOMODCACHE ... are honoured as usual.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE_ROOT=${LOGPLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/logplayer}
VERSION_DIR=$CACHE_ROOT/k8s/$K8S_VERSION
BIN=$VERSION_DIR/bin

log() { printf '[e2e/install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case $K8S_VERSION in v1.*.*) ;; *) die "K8S_VERSION must look like v1.Y.Z, got '$K8S_VERSION'";; esac
case $ETCD_VERSION in v3.*.*) ;; *) die "ETCD_VERSION must look like v3.Y.Z, got '$ETCD_VERSION'";; esac

GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; } || die "go not found in PATH"
export GOWORK=off CGO_ENABLED=0

# "v1.37.2" -> minor "37"; staging modules are published as v0.37.2.
K8S_MINOR=${K8S_VERSION#v1.}; K8S_MINOR=${K8S_MINOR%%.*}
STAGING_VERSION=v0.${K8S_VERSION#v1.}
ETCD_PLAIN=${ETCD_VERSION#v}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Bump when the build recipe below changes (flags, ldflags): cached binaries built
# the old way are then rebuilt even though their --version still matches.
RECIPE=1

# --- what is already there -------------------------------------------------------
want_stamp() { # name
	case $1 in
	etcd) echo "etcd $ETCD_VERSION recipe $RECIPE" ;;
	*) echo "$1 $K8S_VERSION recipe $RECIPE" ;;
	esac
}

cached_ok() { # name: binary in bin/ has the right stamp and reports the right version
	[ "$(cat "$BIN/.$1.stamp" 2>/dev/null || true)" = "$(want_stamp "$1")" ] &&
		version_ok "$1" "$BIN/$1"
}

version_ok() { # name path
	local out
	[ -x "$2" ] || return 1
	case $1 in
	kube-apiserver | kube-controller-manager)
		out=$("$2" --version 2>/dev/null) || return 1
		[ "$out" = "Kubernetes $K8S_VERSION" ] ;;
	kubectl)
		out=$(KUBECONFIG=/dev/null "$2" version --client 2>/dev/null) || return 1
		grep -qx "Client Version: $K8S_VERSION" <<<"$out" ;;
	etcd)
		out=$("$2" --version 2>/dev/null) || return 1
		grep -qx "etcd Version: $ETCD_PLAIN" <<<"$out" ;;
	*) return 1 ;;
	esac
}

missing() {
	local n m=()
	for n in kube-apiserver kube-controller-manager kubectl etcd; do
		cached_ok "$n" || m+=("$n")
	done
	echo "${m[*]-}"
}

mkdir -p "$BIN"
MISSING=$(missing)
if [ -z "$MISSING" ]; then
	log "cached: $BIN (kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
	echo "$BIN"
	exit 0
fi

# Serialize concurrent installs of the same version (parallel test processes).
exec 9>"$VERSION_DIR/.lock"
if ! flock -n 9; then
	log "another install.sh holds $VERSION_DIR/.lock; waiting"
	flock 9
fi
MISSING=$(missing) # someone else may have built them meanwhile
if [ -z "$MISSING" ]; then
	log "cached: $BIN"
	echo "$BIN"
	exit 0
fi

T_START=$(now)
log "building into $BIN: $MISSING (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, $("$GO" version | awk '{print $3}'), $(nproc) cpus)"
log "this takes several minutes from a cold Go cache"

WORK=$(mktemp -d "$VERSION_DIR/.work.XXXXXX")
HEARTBEAT_PID=
cleanup() {
	if [ -n "$HEARTBEAT_PID" ]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/out"

# Print something every minute so CI logs don't look hung.  On TERM it also kills
# its `sleep`, which would otherwise keep our stdout/stderr pipes open for up to a
# minute after we exit (a caller reading them to EOF would wait that long).
(
	trap 'kill "$s" 2>/dev/null; exit 0' TERM
	t=0
	while :; do
		sleep 60 &
		s=$!
		wait "$s"
		t=$((t + 60))
		log "... still building (${t}s)"
	done
) </dev/null &
HEARTBEAT_PID=$!

TIMINGS=()
want() { [[ " $MISSING " == *" $1 "* ]]; }

# Read "Field": "value" from `go mod download -json` output / .info files.
json_field() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" | head -n1; }

# Create the work module directory $WORK/<dir> and `go mod download -json` <module@version>
# from it. Sets M (that directory), t0 (when the fetch started) and DL (the JSON).
fetch_module() { # dir module@version [what of it, for the log]
	M=$WORK/$1
	mkdir -p "$M"
	t0=$(now)
	log "fetching $2${3:+ $3}"
	DL=$(cd "$M" && "$GO" mod download -json "$2") ||
		die "go mod download $2 failed: $DL"
}

# --- kube-apiserver, kube-controller-manager, kubectl -------------------------------
KUBE_PKGS=()
for n in kube-apiserver kube-controller-manager kubectl; do
	want "$n" && KUBE_PKGS+=("k8s.io/kubernetes/cmd/$n")
done

if [ ${#KUBE_PKGS[@]} -gt 0 ]; then
	fetch_module kube "k8s.io/kubernetes@$K8S_VERSION" "go.mod"
	KMOD=$(json_field GoMod <<<"$DL")
	KINFO=$(json_field Info <<<"$DL")
	[ -f "$KMOD" ] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
	GIT_COMMIT=$( { [ -f "$KINFO" ] && json_field Hash <"$KINFO"; } || true)
	BUILD_DATE=$( { [ -f "$KINFO" ] && json_field Time <"$KINFO"; } || true)
	BUILD_DATE=${BUILD_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
	GO_DIRECTIVE=$(awk '$1 == "go" { print $2; exit }' "$KMOD")

	# The staging modules: `k8s.io/X v0.0.0` requirements plus the replace block's
	# `k8s.io/X => ./staging/src/k8s.io/X`; replace each by its published v0.Y.Z.
	STAGING=$( {
		awk '/^require[[:space:]]*\(/ { r = 1; next } r && /^\)/ { r = 0 }
		     r && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }
		     /^require[[:space:]]+k8s\.io\// && $3 == "v0.0.0" { print $2 }' "$KMOD"
		awk '/^replace[[:space:]]*\(/ { r = 1; next } r && /^\)/ { r = 0 }
		     r && $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }
		     /^replace[[:space:]]/ && $3 == "=>" && $4 ~ /^\.\/staging\// { print $2 }' "$KMOD"
	} | sort -u)
	[ -n "$STAGING" ] || die "found no staging modules in $KMOD"
	log "replacing $(wc -l <<<"$STAGING") staging modules with their $STAGING_VERSION releases"
	{
		echo "module logplayer.invalid/e2e-kube-bins"
		echo
		echo "go $GO_DIRECTIVE"
		echo
		awk '$1 == "godebug"' "$KMOD"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"; done <<<"$STAGING"
		echo ")"
	} >"$M/go.mod"

	log "resolving and downloading modules for ${KUBE_PKGS[*]}"
	(cd "$M" && "$GO" list -mod=mod -deps "${KUBE_PKGS[@]}" >/dev/null) ||
		die "module resolution failed (see above)"
	t1=$(now)
	TIMINGS+=("kube modules download: $(secs "$t0" "$t1")s")

	LDX=""
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		LDX+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
		LDX+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
		[ -n "$GIT_COMMIT" ] && LDX+=" -X $pkg.gitCommit=$GIT_COMMIT"
	done
	KUBE_BUILD=("$GO" build -mod=mod -trimpath -ldflags "-s -w$LDX")

	if [ "${E2E_BUILD_SEPARATELY:-0}" = 1 ]; then
		for pkg in "${KUBE_PKGS[@]}"; do
			tb=$(now)
			log "go build $pkg"
			(cd "$M" && "${KUBE_BUILD[@]}" -o "$WORK/out/" "$pkg") || die "go build $pkg failed"
			TIMINGS+=("${pkg##*/} build: $(secs "$tb" "$(now)")s")
		done
	else
		log "go build ${KUBE_PKGS[*]}"
		(cd "$M" && "${KUBE_BUILD[@]}" -o "$WORK/out/" "${KUBE_PKGS[@]}") || die "go build failed"
		TIMINGS+=("kube build (${KUBE_PKGS[*]##*/}): $(secs "$t1" "$(now)")s")
	fi
fi

# --- etcd -------------------------------------------------------------------------
if want etcd; then
	fetch_module etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
	EMOD=$(json_field GoMod <<<"$DL")
	EINFO=$(json_field Info <<<"$DL")
	ETCD_SHA=$( { [ -f "$EINFO" ] && json_field Hash <"$EINFO"; } || true)
	# The etcd binary's main package is the root of the server module (server/main.go).
	cat >"$M/go.mod" <<-EOF
	module logplayer.invalid/e2e-etcd-bin

	go $(awk '$1 == "go" { print $2; exit }' "$EMOD")

	require go.etcd.io/etcd/server/v3 $ETCD_VERSION
	EOF
	log "resolving and downloading modules for etcd $ETCD_VERSION"
	(cd "$M" && "$GO" list -mod=mod -deps go.etcd.io/etcd/server/v3 >/dev/null) ||
		die "module resolution for go.etcd.io/etcd/server/v3@$ETCD_VERSION failed"
	t1=$(now)
	TIMINGS+=("etcd modules download: $(secs "$t0" "$t1")s")
	log "go build etcd"
	(cd "$M" && "$GO" build -mod=mod -trimpath \
		-ldflags "-s -w${ETCD_SHA:+ -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_SHA:0:10}}" \
		-o "$WORK/out/etcd" go.etcd.io/etcd/server/v3) || die "go build etcd failed"
	TIMINGS+=("etcd build: $(secs "$t1" "$(now)")s")
fi

# --- verify, then move into place ----------------------------------------------------
for n in $MISSING; do
	version_ok "$n" "$WORK/out/$n" || die "freshly built $n does not report the expected version"
done
for n in $MISSING; do
	rm -f "$BIN/.$n.stamp"
	mv -f "$WORK/out/$n" "$BIN/$n" # same file system: atomic rename
	want_stamp "$n" >"$BIN/.$n.stamp"
done

TOTAL=$(secs "$T_START" "$(now)")
TIMINGS+=("total: ${TOTAL}s")
{
	echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) built [$MISSING] k8s=$K8S_VERSION etcd=$ETCD_VERSION $("$GO" version | awk '{print $3}') cpus=$(nproc)"
	printf '%s\n' "${TIMINGS[@]}"
} >>"$VERSION_DIR/build-timings.txt"
for t in "${TIMINGS[@]}"; do log "timing: $t"; done
log "done: $BIN"
echo "$BIN"
