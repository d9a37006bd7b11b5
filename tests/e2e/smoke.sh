#!/usr/bin/env bash
# Smoke test of the e2e control plane: install (or reuse) the binaries, bring a
# control plane up in a temporary DIR, check the controllers and RBAC the e2e
# tests rely on, bring it down and check that nothing is left running.
#
#   tests/e2e/smoke.sh [DIR]      (default: a fresh mktemp -d, removed on success)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/logplayer-e2e-smoke.XXXXXX")}
KEEP=${1:+1}

say() { printf '[e2e/smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
PASSED=0
FAILED=0
check() { # description command...
	local d=$1
	shift
	if "$@"; then
		say "ok: $d"
		PASSED=$((PASSED + 1))
	else
		say "FAILED: $d"
		FAILED=$((FAILED + 1))
	fi
}
# eventually SECONDS command...: retries until the command succeeds
eventually() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.5
	done
}

BIN=$("$HERE/install.sh")
export KUBEBUILDER_ASSETS=$BIN
K=$BIN/kubectl

UP=$("$HERE/control-plane.sh" up "$DIR")
eval "$UP"
trap '"$HERE/control-plane.sh" down "$DIR" || true' EXIT
PIDS=$(awk '{ print $2 }' "$DIR/pids")

count() { "$K" get "$@" --no-headers 2>/dev/null | wc -l; }
n_is() { local want=$1; shift; [ "$(count "$@")" = "$want" ]; }

check "server version is the built one" bash -c "'$K' version | grep -qx 'Server Version: $("$BIN/kube-apiserver" --version | awk '{print $2}')'"
check "CRDs apply" "$K" apply -f "$REPO/crds/" -o name
check "CRDs established" "$K" wait --for=condition=Established crd --all --timeout=60s -o name
# The CRD's OpenAPI schema is published a moment after it is Established.
check "kubectl explain logplayer.spec" eventually 30 bash -c "'$K' explain logplayer.spec | grep -q 'DESCRIPTION'"

"$K" create deployment x --image=nginx --replicas=2 >/dev/null
check "deployment -> ReplicaSet" eventually 30 n_is 1 rs -l app=x
check "ReplicaSet -> 2 Pending pods" eventually 30 n_is 2 pods -l app=x --field-selector=status.phase=Pending
"$K" delete deployment x --wait=true >/dev/null
check "garbage collector removes ReplicaSet and pods" eventually 30 n_is 0 rs,pods -l app=x

"$K" apply -f - >/dev/null <<-'EOF'
	apiVersion: v1
	kind: Service
	metadata: {name: web}
	spec:
	  clusterIP: None
	  selector: {app: web}
	  ports: [{port: 80}]
	---
	apiVersion: apps/v1
	kind: StatefulSet
	metadata: {name: web}
	spec:
	  serviceName: web
	  replicas: 1
	  selector: {matchLabels: {app: web}}
	  template:
	    metadata: {labels: {app: web}}
	    spec:
	      containers: [{name: c, image: nginx}]
	---
	apiVersion: policy/v1
	kind: PodDisruptionBudget
	metadata: {name: web}
	spec:
	  minAvailable: 1
	  selector: {matchLabels: {app: web}}
EOF
check "StatefulSet creates web-0" eventually 30 "$K" get pod web-0
check "PodDisruptionBudget gets a status" eventually 30 bash -c "'$K' get pdb web -o jsonpath='{.status.expectedPods}' | grep -qx 1"
check "EndpointSlice for the Service" eventually 30 n_is 1 endpointslices -l kubernetes.io/service-name=web
check "RBAC: default SA may not create pods" bash -c "[ \"\$('$K' auth can-i --as=system:serviceaccount:default:default create pods)\" = no ]"
check "RBAC: admin may create pods" bash -c "[ \"\$('$K' auth can-i create pods)\" = yes ]"
check "ServiceAccount token authenticates" bash -c "'$K' --kubeconfig=/dev/null --server=\$(sed -n 's/^APISERVER_URL=//p' '$DIR/env') --certificate-authority='$DIR/pki/ca.crt' --token=\$('$K' create token default) auth whoami | grep -q system:serviceaccount:default:default"

"$HERE/control-plane.sh" down "$DIR"
trap - EXIT
left=""
for p in $PIDS; do
	# a zombie (state Z) has exited; only its parent has not reaped it yet
	[ -d "/proc/$p" ] && [ "$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)" != Z ] && left="$left $p"
done
check "down leaves no process running" test -z "$left"

if [ "$FAILED" = 0 ] && [ -z "$KEEP" ]; then rm -rf "$DIR"; fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
