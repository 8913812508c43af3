{{/* Name of the release's objects: "tokensync" unless overridden. */}}
{{- define "tokensync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokensync.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokensync
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokensync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tokensync.serviceAccountName" -}}
{{- default (include "tokensync.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tokensync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's RBAC rules, read from deploy/base/rbac.yaml (files/rbac.yaml is a link to
it) so that the chart and the kustomize install grant exactly the same.
*/}}
{{- define "tokensync.rules" -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/rbac.yaml") -}}
{{- $object := fromYaml $doc -}}
{{- if eq (get $object "kind") "ClusterRole" -}}
{{- toYaml (get $object "rules") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The workload identity rules (opt-in: workloadIdentity.enabled), read from
deploy/components/workload-identity/rbac.yaml (files/workload-identity.yaml is a link to
it), so that the chart and the kustomize component grant exactly the same.
*/}}
{{- define "tokensync.workloadIdentityRules" -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/workload-identity.yaml") -}}
{{- $object := fromYaml $doc -}}
{{- if eq (get $object "kind") "ClusterRole" -}}
{{- toYaml (get $object "rules") -}}
{{- end -}}
{{- end -}}
{{- end -}}
