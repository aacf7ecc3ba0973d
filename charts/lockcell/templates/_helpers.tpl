{{/* Name of the chart, truncated for label values. */}}
{{- define "lockcell.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects. */}}
{{- define "lockcell.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pod. */}}
{{- define "lockcell.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lockcell.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "lockcell.labels" -}}
{{ include "lockcell.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: lockcell
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "lockcell.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lockcell.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image, tag defaulting to appVersion. */}}
{{- define "lockcell.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Rules for the namespaced resources the operator touches - exactly the calls it makes
(tests/operator/test_operator_kmock.py records them):
Cells are watched and patched (finalizer, progress annotations, status), and owner
references with blockOwnerDeletion need update on cells/finalizers; the owned objects
are read, created, merge-patched and deleted; Secrets are never patched or listed; pods are
only listed; volumes (PVCs) are listed and deleted when reclaimPolicy is Delete.
*/}}
{{- define "lockcell.namespacedRules" -}}
- apiGroups: ["lockcell.io"]
  resources: ["cells"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["lockcell.io"]
  resources: ["cells/status"]
  verbs: ["patch"]
- apiGroups: ["lockcell.io"]
  resources: ["cells/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
