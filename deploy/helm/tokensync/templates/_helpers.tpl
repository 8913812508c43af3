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

{{/*
The leader election Role's rules (Leases in one namespace), read from deploy/base/rbac.yaml
(files/rbac.yaml), the Role tokensync-leader-election, so that the chart and the kustomize
install grant exactly the same.
*/}}
{{- define "tokensync.leaseRules" -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/rbac.yaml") -}}
{{- $object := fromYaml $doc -}}
{{- if and (eq (get $object "kind") "Role") (eq (get (get $object "metadata") "name") "tokensync-leader-election") -}}
{{- toYaml (get $object "rules") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the Leases live: leaderElection.namespace, else the release namespace. */}}
{{- define "tokensync.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{/*
Values that the schema cannot compare with each other, checked as `tokensync run` checks
them (client-go's rules). With leader election a holder must give up before its Lease
expires (renewDeadline < leaseDuration) and get more than one try within the deadline
(1.2 x retryPeriod < renewDeadline). Without it, a second replica would do
all the work again (safe, decision 0036, but wasteful), and shards need election.
*/}}
{{- define "tokensync.checkLeaderElection" -}}
{{- $election := .Values.leaderElection -}}
{{- if $election.enabled -}}
{{- if not (lt (float64 $election.renewDeadline) (float64 $election.leaseDuration)) -}}
{{- fail (printf "leaderElection.renewDeadline (%v) must be less than leaderElection.leaseDuration (%v): a holder must give its Lease up before another replica may take it" $election.renewDeadline $election.leaseDuration) -}}
{{- end -}}
{{- if not (lt (mulf $election.retryPeriod 1.2) (float64 $election.renewDeadline)) -}}
{{- fail (printf "leaderElection.retryPeriod (%v) must be well under leaderElection.renewDeadline (%v): 1.2 x retryPeriod < renewDeadline, as the operator checks" $election.retryPeriod $election.renewDeadline) -}}
{{- end -}}
{{- else -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %v but leaderElection.enabled is false: without leader election every replica does all the work (safe, docs/decisions/0036, but wasteful). Set replicaCount=1, or enable leader election" .Values.replicaCount) -}}
{{- end -}}
{{- if gt (int .Values.shards) 1 -}}
{{- fail (printf "shards is %v but leaderElection.enabled is false: shards are held through Leases; enable leader election or set shards=1" .Values.shards) -}}
{{- end -}}
{{- end -}}
{{- end -}}
