{{/* The chart name, or nameOverride. */}}
{{- define "parkfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: RELEASE-NAME, or RELEASE when it already holds the name. */}}
{{- define "parkfleet.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "parkfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "parkfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parkfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "parkfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parkfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects (the selector labels plus the common ones). */}}
{{- define "parkfleet.componentLabels" -}}
{{ include "parkfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "parkfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "parkfleet.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "parkfleet.fullname" .)) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "parkfleet.gateway.serviceAccountName" -}}
{{- default (printf "%s-gateway" (include "parkfleet.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- end }}

{{- define "parkfleet.peeringName" -}}
{{- default (include "parkfleet.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "parkfleet.gateway.certsSecret" -}}
{{- default (printf "%s-gateway-certs" (include "parkfleet.fullname" .)) .Values.gateway.certs.secretName }}
{{- end }}

{{/* Pod-level security context: the restricted Pod Security Standard. */}}
{{- define "parkfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
fsGroup: {{ .Values.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: the restricted Pod Security Standard. */}}
{{- define "parkfleet.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* True (non-empty) when the Prometheus Operator's API is served. */}}
{{- define "parkfleet.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* NetworkPolicy egress of both components: DNS and the API server, nothing else. */}}
{{- define "parkfleet.netpol.egress" -}}
# Name lookups: the cluster DNS (networkPolicy.dnsTo).
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The Kubernetes API: the only thing either component calls.
- ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.networkPolicy.apiServer.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  {{- end }}
{{- end }}

{{/* NetworkPolicy ingress sources of what the API server calls (the kubelet API, the
webhook): networkPolicy.kubeletFrom, else the apiServer.cidrs, else nothing (anyone). */}}
{{- define "parkfleet.netpol.fromAPIServer" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.kubeletFrom -}}
from:
  {{- toYaml $np.kubeletFrom | nindent 2 }}
{{- else if $np.apiServer.cidrs -}}
from:
  {{- range $np.apiServer.cidrs }}
  - ipBlock: {cidr: {{ . | quote }}}
  {{- end }}
{{- end }}
{{- end }}

{{/* CEL: the Node in "object" or "oldObject" (the argument) is a parkfleet cell Node
(nodeagent/nodes.py): pf-<pool>-<index>, the name pf-<label parkfleet.io/cell>, that label
<label parkfleet.io/pool>-<index>. The caller's variables.cellName is the name pattern. */}}
{{- define "parkfleet.cel.cellNode" -}}
{{- $o := . -}}
{{ $o }} != null && {{ $o }}.metadata.name.matches(variables.cellName) && has({{ $o }}.metadata.labels) && 'parkfleet.io/pool' in {{ $o }}.metadata.labels && 'parkfleet.io/cell' in {{ $o }}.metadata.labels && {{ $o }}.metadata.name == 'pf-' + {{ $o }}.metadata.labels['parkfleet.io/cell'] && {{ $o }}.metadata.labels['parkfleet.io/cell'].startsWith({{ $o }}.metadata.labels['parkfleet.io/pool'] + '-')
{{- end }}

{{/* Every gateway shard's car address, by index, comma-separated. */}}
{{- define "parkfleet.gateway.shardAddresses" -}}
{{- if .Values.gateway.shardAddresses -}}
{{- join "," .Values.gateway.shardAddresses -}}
{{- else -}}
{{- $fullname := include "parkfleet.fullname" . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.gateway.shards) -}}
{{- $out = append $out (printf "%s-gateway-%d.%s-gateway-headless.%s.svc:%d" $fullname $i $fullname $.Release.Namespace (int $.Values.gateway.grpcPort)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
{{- end }}
