{{/*
Chart name, truncated to 63 characters (the limit of a label value).
*/}}
{{- define "logplayer-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the resources: the release name, plus the chart name unless the release name
already contains it. A release named "logplayer-operator" gives "logplayer-operator", the
names deploy/ uses.
*/}}
{{- define "logplayer-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
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
The operator image, repository:tag; the tag defaults to the chart's appVersion.
*/}}
{{- define "logplayer-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Image of the pods the operator runs when a LogPlayer sets no spec.image.
*/}}
{{- define "logplayer-operator.defaultPlayerImage" -}}
{{- default (include "logplayer-operator.image" .) .Values.defaultPlayerImage }}
{{- end }}
