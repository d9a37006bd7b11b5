#!/usr/bin/env bash
# A throw-away Kubernetes control plane on loopback, for the e2e tests:
# etcd + kube-apiserver (TLS, RBAC) + kube-controller-manager.  No kubelet,
# no scheduler, no kube-proxy: pods stay Pending unless a test plays the node.
#
#   control-plane.sh up DIR     start it; prints `export KUBECONFIG=DIR/kubeconfig`
#   control-plane.sh down DIR   stop what `up DIR` started (pids in DIR/pids)
#   control-plane.sh status DIR exit 0 if every component in DIR/pids runs
#
# DIR gets: <component>.log, pids ("name pid" lines), kubeconfig (admin,
# system:masters), pki/, etcd/ (data), env (ports and URLs, shell syntax).
#
# Binaries come from $KUBEBUILDER_ASSETS if it holds all four (kube-apiserver,
# kube-controller-manager, etcd, kubectl), else from tests/e2e/install.sh.
#
# Environment:
#   E2E_CP_TIMEOUT   seconds each component may take to become ready (default 60)
#   E2E_CP_VERBOSITY klog -v for kube-apiserver / kube-controller-manager (default 1)
#   E2E_CP_CONTROLLERS  kube-controller-manager --controllers (default '*', i.e. its
#                    default set); e.g. '*,-pod-garbage-collector-controller'
#   E2E_CP_APISERVER_ARGS / E2E_CP_KCM_ARGS  extra flags (word-split) appended to
#                    kube-apiserver / kube-controller-manager's command line
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${E2E_CP_TIMEOUT:-60}
ATTEMPT=${E2E_CP_ATTEMPT:-1} # `up` retries with new ports if one was taken meanwhile
VERBOSITY=${E2E_CP_VERBOSITY:-1}
CONTROLLERS=${E2E_CP_CONTROLLERS:-*}
COMPONENTS=(etcd kube-apiserver kube-controller-manager) # start order

log() { printf '[e2e/control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

usage() {
	echo "usage: $0 up|down|status DIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
case $CMD in
up) mkdir -p "$2" ;;
down | status) [ -d "$2" ] || { log "$CMD: no such directory $2 (nothing to do)"; [ "$CMD" = down ] && exit 0; echo down; exit 1; } ;;
*) usage ;;
esac
DIR=$(cd "$2" && pwd)
PIDS=$DIR/pids
PKI=$DIR/pki

# --- pids bookkeeping -------------------------------------------------------------
pid_of() { [ -f "$PIDS" ] && awk -v n="$1" '$1 == n { print $2 }' "$PIDS" | tail -n1; }

# True if pid runs the named component started from this DIR (guards against pid reuse).
is_ours() { # name pid
	local pid=$2 exe cmdline
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	[ "$(basename "${exe% (deleted)}")" = "$1" ] || return 1
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$DIR/"* ]]
}

alive() { local p; p=$(pid_of "$1"); is_ours "$1" "$p"; }

all_alive() {
	local c
	[ -f "$PIDS" ] || return 1
	for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
}

stop_all() {
	local c pid i left
	[ -f "$PIDS" ] || return 0
	local -a ours=()
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do # reverse start order
		c=${COMPONENTS[i]}
		pid=$(pid_of "$c")
		if is_ours "$c" "$pid"; then
			log "stopping $c (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			ours+=("$c:$pid")
		fi
	done
	for ((i = 0; i < 100; i++)); do # up to 10 s for a clean exit
		left=0
		for e in "${ours[@]}"; do is_ours "${e%%:*}" "${e#*:}" && left=1; done
		[ $left = 0 ] && break
		sleep 0.1
	done
	for e in "${ours[@]}"; do
		if is_ours "${e%%:*}" "${e#*:}"; then
			log "${e%%:*} (pid ${e#*:}) ignored SIGTERM; sending SIGKILL"
			kill -KILL "${e#*:}" 2>/dev/null || true
		fi
	done
	for ((i = 0; i < 50; i++)); do
		left=0
		for e in "${ours[@]}"; do is_ours "${e%%:*}" "${e#*:}" && left=1; done
		[ $left = 0 ] && break
		sleep 0.1
	done
	rm -f "$PIDS"
}

# --- helpers ------------------------------------------------------------------------
fail() { # component message
	if [ -f "$DIR/$1.log" ] && grep -q 'address already in use' "$DIR/$1.log" && [ "$ATTEMPT" -lt 3 ]; then
		log "$1: a port was taken meanwhile; retrying with new ports"
		stop_all
		mv -f "$DIR/$1.log" "$DIR/$1.log.port-clash"
		E2E_CP_ATTEMPT=$((ATTEMPT + 1)) exec bash "${BASH_SOURCE[0]}" up "$DIR"
	fi
	log "ERROR: $1: $2"
	if [ -f "$DIR/$1.log" ]; then
		log "last 40 lines of $DIR/$1.log:"
		tail -n 40 "$DIR/$1.log" >&2
	fi
	stop_all
	exit 1
}

# Free TCP ports below the ephemeral range, read from /proc (no ss/netstat needed).
declare -A TAKEN=()
mark_used_ports() {
	local f _sl local_addr _rest
	for f in /proc/net/tcp /proc/net/tcp6; do
		[ -r "$f" ] || continue
		while read -r _sl local_addr _rest; do
			[[ $local_addr == *:* ]] || continue
			TAKEN[$((16#${local_addr##*:}))]=1
		done <"$f"
	done
}
free_port() { # VAR: sets VAR (no subshell, so TAKEN remembers earlier picks)
	local p i
	for ((i = 0; i < 1000; i++)); do
		p=$((20000 + RANDOM % 12000))
		if [ -z "${TAKEN[$p]-}" ]; then
			TAKEN[$p]=1
			printf -v "$1" '%s' "$p"
			return
		fi
	done
	log "ERROR: no free port found"
	exit 1
}

start() { # name args...
	local name=$1
	shift
	log "starting $name"
	# stdin/stdout/stderr detached so callers waiting on our stdout don't hang.
	"$BIN/$name" "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
	local pid=$! i
	echo "$name $pid" >>"$PIDS"
	# Until the forked shell has exec'd the binary, /proc/PID/exe is bash: wait for
	# that so `alive` does not mistake a slow exec for an exit.
	for ((i = 0; i < 100; i++)); do
		is_ours "$name" "$pid" && break
		[ -d "/proc/$pid" ] || break
		sleep 0.05
	done
}

# wait_for name description command...: polls until the command succeeds.
wait_for() {
	local name=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		alive "$name" || fail "$name" "exited while waiting for $what"
		[ $SECONDS -lt $deadline ] || fail "$name" "$what not reached within ${TIMEOUT}s"
		sleep 0.5
	done
}

curl_ok() { # url [curl args...]: body must be exactly "ok"
	local url=$1 body
	shift
	body=$(curl -sS --max-time 5 "$@" "$url") && [ "$body" = ok ]
}

b64() { base64 -w0 <"$1"; }

# --- certificates -------------------------------------------------------------------
sign() { # name subject extensions-file
	openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr" 2>/dev/null
	openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 3650 -sha256 -extfile "$3" -out "$PKI/$1.crt" 2>/dev/null
	rm -f "$PKI/$1.csr"
}

PKI_RECIPE=2 # bump when make_pki changes, to regenerate old DIRs' pki/
make_pki() {
	[ "$(cat "$PKI/done" 2>/dev/null || true)" = "$PKI_RECIPE" ] && return 0
	log "generating certificates in $PKI"
	rm -rf "$PKI"
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
		-days 3650 -sha256 -subj "/CN=logplayer-e2e-ca" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	cat >"$PKI/server.ext" <<-'EOF'
	basicConstraints=critical,CA:FALSE
	keyUsage=critical,digitalSignature,keyEncipherment
	extendedKeyUsage=serverAuth
	subjectAltName=IP:127.0.0.1,IP:::1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
	EOF
	cat >"$PKI/client.ext" <<-'EOF'
	basicConstraints=critical,CA:FALSE
	keyUsage=critical,digitalSignature,keyEncipherment
	extendedKeyUsage=clientAuth
	EOF
	sign apiserver "/CN=kube-apiserver" "$PKI/server.ext"
	sign admin "/O=system:masters/CN=admin" "$PKI/client.ext"
	sign kube-controller-manager "/CN=system:kube-controller-manager" "$PKI/client.ext"
	# Service-account token signing key pair.
	openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
	openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	# Front proxy (request-header authentication, for aggregated API servers; without it
	# the extension-apiserver-authentication ConfigMap lacks a CA and every delegating
	# component logs errors about it).
	openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-ca.key" \
		-out "$PKI/front-proxy-ca.crt" -days 3650 -sha256 -subj "/CN=logplayer-e2e-front-proxy-ca" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-client.key" \
		-subj "/CN=front-proxy-client" -out "$PKI/front-proxy-client.csr" 2>/dev/null
	openssl x509 -req -in "$PKI/front-proxy-client.csr" -CA "$PKI/front-proxy-ca.crt" \
		-CAkey "$PKI/front-proxy-ca.key" -CAcreateserial -days 3650 -sha256 \
		-extfile "$PKI/client.ext" -out "$PKI/front-proxy-client.crt" 2>/dev/null
	rm -f "$PKI/front-proxy-client.csr"
	echo "$PKI_RECIPE" >"$PKI/done"
}

write_kubeconfig() { # file user-cert-name server
	local tmp=$1.tmp
	cat >"$tmp" <<-EOF
	apiVersion: v1
	kind: Config
	clusters:
	- name: e2e
	  cluster:
	    server: $3
	    certificate-authority-data: $(b64 "$PKI/ca.crt")
	users:
	- name: $2
	  user:
	    client-certificate-data: $(b64 "$PKI/$2.crt")
	    client-key-data: $(b64 "$PKI/$2.key")
	contexts:
	- name: e2e
	  context:
	    cluster: e2e
	    user: $2
	    namespace: default
	current-context: e2e
	EOF
	chmod 600 "$tmp"
	mv -f "$tmp" "$1"
}

# --- binaries -------------------------------------------------------------------------
find_bin() {
	local d=${KUBEBUILDER_ASSETS-} n ok=1
	if [ -n "$d" ]; then
		for n in etcd kube-apiserver kube-controller-manager kubectl; do
			[ -x "$d/$n" ] || ok=0
		done
		if [ $ok = 1 ]; then
			echo "$d"
			return
		fi
		log "KUBEBUILDER_ASSETS=$d lacks one of etcd/kube-apiserver/kube-controller-manager/kubectl; using install.sh"
	fi
	"$HERE/install.sh"
}

# --- up -------------------------------------------------------------------------------
up() {
	if all_alive; then
		local port
		port=$(sed -n 's/^APISERVER_PORT=//p' "$DIR/env" 2>/dev/null || true)
		if [ -n "$port" ] && curl_ok "https://127.0.0.1:$port/readyz" --cacert "$PKI/ca.crt" \
			--cert "$PKI/admin.crt" --key "$PKI/admin.key"; then
			log "already up in $DIR"
			echo "export KUBECONFIG=$DIR/kubeconfig"
			return 0
		fi
	fi
	stop_all # leftovers of an earlier, partial run in this DIR
	trap 'log "interrupted; stopping what was started"; stop_all; exit 130' INT TERM HUP

	BIN=$(find_bin) || { log "ERROR: could not get the binaries (install.sh failed)"; exit 1; }
	log "binaries: $BIN ($("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -n1))"
	make_pki

	mark_used_ports
	local etcd_client etcd_peer api_port kcm_port
	free_port etcd_client
	free_port etcd_peer
	free_port api_port
	free_port kcm_port
	local server=https://127.0.0.1:$api_port
	cat >"$DIR/env" <<-EOF
	ETCD_CLIENT_PORT=$etcd_client
	ETCD_PEER_PORT=$etcd_peer
	ETCD_URL=http://127.0.0.1:$etcd_client
	APISERVER_PORT=$api_port
	APISERVER_URL=$server
	KCM_PORT=$kcm_port
	KUBECONFIG=$DIR/kubeconfig
	KUBEBUILDER_ASSETS=$BIN
	EOF
	for c in "${COMPONENTS[@]}"; do
		[ -f "$DIR/$c.log" ] && mv -f "$DIR/$c.log" "$DIR/$c.log.prev"
	done
	: >"$PIDS"

	# etcd: fresh data every `up`, plain HTTP on loopback only.
	rm -rf "$DIR/etcd"
	mkdir -p "$DIR/etcd"
	chmod 700 "$DIR/etcd"
	start etcd \
		--name=e2e \
		--data-dir="$DIR/etcd" \
		--listen-client-urls="http://127.0.0.1:$etcd_client" \
		--advertise-client-urls="http://127.0.0.1:$etcd_client" \
		--listen-peer-urls="http://127.0.0.1:$etcd_peer" \
		--initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
		--initial-cluster="e2e=http://127.0.0.1:$etcd_peer" \
		--initial-cluster-state=new \
		--unsafe-no-fsync=true \
		--quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) \
		--log-level=warn
	wait_for etcd "http://127.0.0.1:$etcd_client/health" \
		bash -c "curl -sS --max-time 5 http://127.0.0.1:$etcd_client/health | grep -q '\"health\":\"true\"'"
	log "etcd ready on 127.0.0.1:$etcd_client"

	mkdir -p "$DIR/apiserver-certs"
	# shellcheck disable=SC2086 # E2E_CP_APISERVER_ARGS is meant to be word-split
	start kube-apiserver \
		--etcd-servers="http://127.0.0.1:$etcd_client" \
		--bind-address=127.0.0.1 \
		--advertise-address=127.0.0.1 \
		--secure-port="$api_port" \
		--cert-dir="$DIR/apiserver-certs" \
		--tls-cert-file="$PKI/apiserver.crt" \
		--tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" \
		--proxy-client-key-file="$PKI/front-proxy-client.key" \
		--service-account-key-file="$PKI/sa.pub" \
		--service-account-signing-key-file="$PKI/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--authorization-mode=Node,RBAC \
		--service-cluster-ip-range=10.0.0.0/24 \
		--endpoint-reconciler-type=none \
		--allow-privileged=true \
		--profiling=false \
		--v="$VERBOSITY" \
		${E2E_CP_APISERVER_ARGS-}
	wait_for kube-apiserver "$server/readyz" \
		curl_ok "$server/readyz" --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key"
	log "kube-apiserver ready on $server"

	write_kubeconfig "$DIR/kubeconfig" admin "$server"
	write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager "$server"

	local kcmcfg=$DIR/kube-controller-manager.kubeconfig
	mkdir -p "$DIR/kcm-certs"
	# shellcheck disable=SC2086 # E2E_CP_KCM_ARGS is meant to be word-split
	start kube-controller-manager \
		--kubeconfig="$kcmcfg" \
		--authentication-kubeconfig="$kcmcfg" \
		--authorization-kubeconfig="$kcmcfg" \
		--bind-address=127.0.0.1 \
		--secure-port="$kcm_port" \
		--cert-dir="$DIR/kcm-certs" \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" \
		--cluster-signing-key-file="$PKI/ca.key" \
		--service-cluster-ip-range=10.0.0.0/24 \
		--controllers="$CONTROLLERS" \
		--leader-elect=false \
		--profiling=false \
		--v="$VERBOSITY" \
		${E2E_CP_KCM_ARGS-}
	wait_for kube-controller-manager "https://127.0.0.1:$kcm_port/healthz" \
		curl_ok "https://127.0.0.1:$kcm_port/healthz" -k
	log "kube-controller-manager ready on 127.0.0.1:$kcm_port"

	export KUBECONFIG=$DIR/kubeconfig
	wait_for kube-controller-manager "namespace default and ServiceAccount default/default" \
		"$BIN/kubectl" get --request-timeout=5s -n default serviceaccount default
	trap - INT TERM HUP
	log "control plane up in $DIR"
	echo "export KUBECONFIG=$DIR/kubeconfig"
}

# --- main -----------------------------------------------------------------------------
case $CMD in
up) up ;;
down)
	stop_all
	log "down: $DIR"
	;;
status)
	if all_alive; then
		echo up
	else
		echo down
		exit 1
	fi
	;;
*) usage ;;
esac
