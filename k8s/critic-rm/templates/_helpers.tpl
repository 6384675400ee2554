{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "critic-rm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it lacks the chart name. */}}
{{- define "critic-rm.fullname" -}}
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

{{- define "critic-rm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "critic-rm.labels" -}}
helm.sh/chart: {{ include "critic-rm.chart" . }}
app.kubernetes.io/name: {{ include "critic-rm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: critic-rm
{{- end }}

{{/* Selector labels of the gateway pods. */}}
{{- define "critic-rm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "critic-rm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Selector labels of the in-chart Redis. */}}
{{- define "critic-rm.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "critic-rm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "critic-rm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "critic-rm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "critic-rm.redisName" -}}
{{- printf "%s-redis" (include "critic-rm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "critic-rm.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* Tensor-parallel degree: engine.tensorParallelSize, or one shard per requested GPU. */}}
{{- define "critic-rm.tensorParallelSize" -}}
{{- default .Values.gpu.count .Values.engine.tensorParallelSize }}
{{- end }}

{{/* Whether the chart renders its own Secret (external Redis URL and/or API keys). */}}
{{- define "critic-rm.createSecret" -}}
{{- if or .Values.redis.url .Values.auth.apiKeys }}true{{ end }}
{{- end }}

{{/* Run `critic-rm bootstrap --if-missing` at start: not on a read-only claim. */}}
{{- define "critic-rm.bootstrap" -}}
{{- if and .Values.checkpoints.bootstrapIfMissing (not (and .Values.checkpoints.existingClaim .Values.checkpoints.readOnly)) }}1{{ else }}0{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + drain timeout + margin. */}}
{{- define "critic-rm.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.timeoutSeconds .Values.drain.marginSeconds }}
{{- end }}
