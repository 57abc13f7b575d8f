{{- define "jvol.labels" -}}
app.kubernetes.io/name: jvol
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "jvol.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "jvol.pluginDir" -}}
{{ .Values.node.kubeletDir }}/plugins/jvol.io
{{- end }}

{{/* Where the API server is, when the chart is told (no kube-proxy). */}}
{{- define "jvol.apiEnv" -}}
{{- with .Values.kubernetesAPI.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kubernetesAPI.port }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Pod-level network settings shared by the controller and the node. */}}
{{- define "jvol.podNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end }}

{{/* The URL of the in-cluster receiver (sink.enabled). */}}
{{- define "jvol.sinkURL" -}}
{{ ternary "tls" "tcp" .Values.sink.tls }}://{{ .Values.sink.address | default (printf "%s-sink.%s.svc" .Release.Name .Release.Namespace) }}:{{ .Values.sink.port }}
{{- end }}

{{/*
"true" when VolumeSnapshots are served: asked for, and the cluster has the
snapshot API (its CRDs; the snapshot-controller is the cluster's).
*/}}
{{- define "jvol.snapshots" -}}
{{- if and .Values.snapshots.enabled (.Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1/VolumeSnapshotClass") -}}
true
{{- end -}}
{{- end }}
