{{/* The chart name, or nameOverride. */}}
{{- define "plugbay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or fullnameOverride; at most 63 characters. */}}
{{- define "plugbay.fullname" -}}
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

{{- define "plugbay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "plugbay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plugbay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "plugbay.labels" -}}
helm.sh/chart: {{ include "plugbay.chart" . }}
{{ include "plugbay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the host runs as. */}}
{{- define "plugbay.serviceAccountName" -}}
{{- default (include "plugbay.hostName" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where plugin pods run. */}}
{{- define "plugbay.pluginNamespace" -}}
{{- default .Release.Namespace .Values.pluginNamespace }}
{{- end }}

{{/* Names with a suffix: the prefix is cut so the whole stays within 63 characters. */}}
{{- define "plugbay.roleName" -}}
{{- printf "%s-plugins" (include "plugbay.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "plugbay.hostName" -}}
{{- printf "%s-host" (include "plugbay.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/* Network mode: the plugin's Deployment, Service and NetworkPolicy. */}}
{{- define "plugbay.pluginName" -}}
{{- printf "%s-plugin" (include "plugbay.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The plugin's TLS Secret: given, or the one the chart creates. */}}
{{- define "plugbay.pluginTLSSecret" -}}
{{- default (printf "%s-plugin-tls" (include "plugbay.fullname" . | trunc 52 | trimSuffix "-")) .Values.network.tls.secretName }}
{{- end }}

{{/* The name hosts check the plugin's certificate for: it dials pod IPs, which no certificate names. */}}
{{- define "plugbay.pluginServerName" -}}
{{- default (printf "%s.%s.svc" (include "plugbay.pluginName" .) (include "plugbay.pluginNamespace" .)) .Values.network.tls.serverName }}
{{- end }}

{{/* The host grants endpointslices list/watch. */}}
{{- define "plugbay.discovery" -}}
{{- if or .Values.rbac.discovery (and .Values.network.enabled .Values.network.discovery) }}true{{- end }}
{{- end }}

{{/* repository:tag, or pinned by digest: repository@digest (repository:tag@digest with a tag). "what" names
     the values' key for the error. */}}
{{- define "plugbay.image" -}}
{{- $digest := toString (.image.digest | default "") }}
{{- if $digest }}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $digest) }}
{{- fail (printf "%s.image.digest must be sha256: followed by 64 lowercase hex digits (the part after @ of the image's RepoDigests in docker inspect), not %q" .what $digest) }}
{{- end }}
{{- if .image.tag }}
{{- printf "%s:%s@%s" .image.repository .image.tag $digest }}
{{- else }}
{{- printf "%s@%s" .image.repository $digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* A pod's annotations or labels as "key": "value" lines: Kubernetes takes strings only, and a number or
     boolean (prometheus.io/port: 8080, --set ...scrape=true) rendered bare is refused by the API server.
     A values file's whole number is float64 (printed 1.00068e+09 unless made int64 first), --set's int64. Any
     other number is printed as Go prints it (1.10 as "1.1"): quote it in the values to keep its spelling.
     "what" names the values' key. */}}
{{- define "plugbay.stringMap" -}}
{{- range $key, $value := .map }}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- fail (printf "%s.%s must be a string, not a %s%s" $.what $key (kindOf $value) (ternary ": with --set, escape the dots of a key such as prometheus\\.io/port" " (a list): give the value as one string" (kindIs "map" $value))) }}
{{- end }}
{{- if not (kindIs "invalid" $value) }}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $value = int64 $value }}
{{- end }}
{{ $key | quote }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}
