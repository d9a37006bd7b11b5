{{/*
Chart name, truncated to 63 characters (the limit of a label value).
*/}}
{{- define "logplayer-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the resources: the release name, plus the chart name unless the release name
already contains it. A release named "logplayer-operator" gives "logplayer-operator", the
names deploy/ uses. At most 55 characters, so that the names made from it ("-metrics",
"-player", "-lease") stay within the 63 of a Kubernetes name and apart from each other.
*/}}
{{- define "logplayer-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "logplayer-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the pod selector (and of the Service's selector). Never change these: a
Deployment's selector is immutable.
*/}}
{{- define "logplayer-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "logplayer-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every object of the release (the CRDs excepted, which are kept byte-for-byte).
*/}}
{{- define "logplayer-operator.labels" -}}
{{ include "logplayer-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: logplayer
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "logplayer-operator.chart" . }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "logplayer-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "logplayer-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when image.digest is set, else repository:tag (the tag
defaults to the chart's appVersion).
*/}}
{{- define "logplayer-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Image of the pods the operator runs when a LogPlayer sets no spec.image.
*/}}
{{- define "logplayer-operator.defaultPlayerImage" -}}
{{- default (include "logplayer-operator.image" .) .Values.defaultPlayerImage }}
{{- end }}

{{/*
The ClusterRole with the players' permissions, which the operator binds for each LogPlayer.
*/}}
{{- define "logplayer-operator.playerClusterRole" -}}
{{- printf "%s-player" (include "logplayer-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's rules: one ClusterRole, or a Role in each of watchNamespaces. Keep them
identical to deploy/rbac.yaml (tests/chart.rs checks this); the comments there say why each
verb is needed.
*/}}
{{- define "logplayer-operator.rules" }}
  - apiGroups: ["logplayer.io"]
    resources: ["logplayers"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["logplayer.io"]
    resources: ["shards"]
    verbs: ["list", "watch"]
  - apiGroups: ["logplayer.io"]
    resources: ["logplayers/status", "shards/status"]
    verbs: ["patch"]
  - apiGroups: ["logplayer.io"]
    resources: ["logplayers/finalizers", "shards/finalizers"]
    verbs: ["update"]
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["get", "list", "watch", "create", "patch"]
  - apiGroups: ["apps"]
    resources: ["statefulsets"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["serviceaccounts", "configmaps"]
    verbs: ["list", "watch", "create", "patch"]
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "create", "patch"]
  - apiGroups: ["cert-manager.io"]
    resources: ["certificates"]
    verbs: ["create", "patch"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["list", "create", "patch", "delete"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["roles"]
    verbs: ["list", "watch", "create", "patch"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["rolebindings"]
    verbs: ["list", "watch", "create", "patch", "delete"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["clusterroles"]
    verbs: ["bind"]
    resourceNames: [{{ include "logplayer-operator.playerClusterRole" . | quote }}]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch", "list"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get"]
{{- end }}

{{/*
A duration (`15s`, `1m30s`, `1500ms`; the form the schema allows) in nanoseconds.
*/}}
{{- define "logplayer-operator.nanos" -}}
{{- $units := dict "ns" 1 "us" 1000 "ms" 1000000 "s" 1000000000 "m" 60000000000 "h" 3600000000000 -}}
{{- $total := 0 -}}
{{- range (regexFindAll "[0-9]+(ns|us|ms|s|m|h)" . -1) -}}
{{- $n := regexFind "^[0-9]+" . | atoi -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $total = add $total (mul $n (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/*
The operator's start-up rule for its leader election, checked at install time with the same
words: 10ms <= retryPeriod < renewDeadline < leaseDuration <= 1h (empty values are the operator's
defaults, 15s, 10s and 2s). tests/chart.rs checks that the chart and the operator agree.
*/}}
{{- define "logplayer-operator.checkLeaderElection" -}}
{{- $e := .Values.leaderElection -}}
{{- $lease := include "logplayer-operator.nanos" (default "15s" $e.leaseDuration) | atoi -}}
{{- $renew := include "logplayer-operator.nanos" (default "10s" $e.renewDeadline) | atoi -}}
{{- $retry := include "logplayer-operator.nanos" (default "2s" $e.retryPeriod) | atoi -}}
{{- if or (le $lease 0) (gt $lease 3600000000000) -}}
{{- fail (printf "leaderElection.leaseDuration %s: must be above 0 and at most 1h" $e.leaseDuration) -}}
{{- else if lt $retry 10000000 -}}
{{- fail "leaderElection: retry_period must be at least 10ms" -}}
{{- else if ge $retry $renew -}}
{{- fail "leaderElection: retry_period must be shorter than renew_deadline" -}}
{{- else if ge $renew $lease -}}
{{- fail "leaderElection: renew_deadline must be shorter than lease_duration" -}}
{{- end -}}
{{- end }}

{{/*
"true" when the CRD named by the second argument exists in the cluster and belongs to no
Helm release (applied with kubectl): the chart then leaves it as it is. Always empty in
`helm template` (no cluster to look at).
*/}}
{{- define "logplayer-operator.foreignCrd" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" (index . 1) -}}
{{- if $existing -}}
{{- $owner := dig "metadata" "annotations" "meta.helm.sh/release-name" "" $existing -}}
{{- if ne $owner $root.Release.Name -}}true{{- end -}}
{{- end -}}
{{- end }}

{{/*
Refuses podLabels that would replace the labels the operator's selector, its Service and
the NetworkPolicies it writes for the players rely on.
*/}}
{{- define "logplayer-operator.checkPodLabels" -}}
{{- range $k, $_ := .Values.podLabels }}
{{- if has $k (list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/part-of") }}
{{- fail (printf "podLabels: %s is set by the chart (the pod selector and the players' NetworkPolicies rely on it); use another label" $k) }}
{{- end }}
{{- end }}
{{- end }}

