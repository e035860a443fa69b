{{/* Names, labels, images and environment, defined once. */}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "api"). */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "conveyor.componentLabels" -}}
{{ include "conveyor.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "conveyor.api.fullname" -}}
{{- printf "%s-api" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.redis.fullname" -}}
{{- printf "%s-redis" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A worker pool's name: call with (dict "root" $ "pool" $pool). */}}
{{- define "conveyor.worker.fullname" -}}
{{- printf "%s-worker-%s" (include "conveyor.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: call with (dict "root" $ "image" .Values.api.image). A digest wins over the tag. */}}
{{- define "conveyor.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key that hold the Redis password, or nothing when there is none. */}}
{{- define "conveyor.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- default (include "conveyor.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Call with the root, or with (dict "root" $ "service" "api") for that service's own ACL user's password. */}}
{{- define "conveyor.redis.secretKey" -}}
{{- $root := .root | default . -}}
{{- if and $root.Values.redis.enabled $root.Values.redis.acl.enabled (has .service (list "api" "worker")) -}}
{{- printf "redis-%s-password" .service -}}
{{- else if $root.Values.redis.enabled -}}
{{- $root.Values.redis.auth.existingSecretKey -}}
{{- else -}}
{{- $root.Values.externalRedis.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/* The CA that signed Redis' certificate, when the services must verify one: the built-in Redis' or the external one's. */}}
{{- define "conveyor.redis.caSecret" -}}
{{- if and .Values.redis.enabled .Values.redis.tls.enabled -}}
{{- required "redis.tls.secret names the Secret with the certificate (tls.crt, tls.key, ca.crt)" .Values.redis.tls.secret -}}
{{- else if not .Values.redis.enabled -}}
{{- .Values.externalRedis.tlsCaSecret -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redis.caKey" -}}
{{- if .Values.redis.enabled -}}
ca.crt
{{- else -}}
{{- .Values.externalRedis.tlsCaSecretKey -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redis.url" -}}
{{- $cluster := .Values.externalRedis.cluster -}}
{{- if and $cluster.enabled .Values.redis.enabled -}}
{{- fail "externalRedis.cluster is for an external cluster: set redis.enabled=false (the built-in Redis is one node)" -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s://%s:%d/0" (ternary "rediss" "redis" .Values.redis.tls.enabled) (include "conveyor.redis.fullname" .) (int .Values.redis.port) -}}
{{- else if $cluster.enabled -}}
{{- if .Values.externalRedis.sentinel.enabled -}}
{{- fail "externalRedis: cluster and sentinel exclude each other (a cluster fails over by itself)" -}}
{{- end -}}
{{- if not $cluster.seeds -}}
{{- fail "externalRedis.cluster.seeds is empty: name at least one node of the cluster (host:port)" -}}
{{- end -}}
{{- printf "%s://%s" (ternary "rediss+cluster" "redis+cluster" $cluster.tls) (join "," $cluster.seeds) -}}
{{- else -}}
{{- required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/* Environment both services read: Redis, the catalog, documents, OTEL_*. Call with (dict "root" $ "service" "api"). */}}
{{- define "conveyor.commonEnv" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
- name: REDIS_URL
  value: {{ include "conveyor.redis.url" $root | quote }}
{{- if and $values.redis.enabled $values.redis.acl.enabled }}
# Its own ACL user, which cannot run CONFIG, FLUSHALL, DEBUG or KEYS.
- name: REDIS_USERNAME
  value: {{ .service | quote }}
{{- else if and (not $values.redis.enabled) $values.externalRedis.username }}
- name: REDIS_USERNAME
  value: {{ $values.externalRedis.username | quote }}
{{- end }}
{{- $redisSecret := include "conveyor.redis.secretName" $root }}
{{- if $redisSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redisSecret }}
      key: {{ include "conveyor.redis.secretKey" . }}
{{- end }}
{{- if include "conveyor.redis.caSecret" $root }}
- name: REDIS_TLS_CA_FILE
  value: /etc/conveyor/redis-tls/{{ include "conveyor.redis.caKey" $root }}
{{- end }}
{{- if and (not $values.redis.enabled) $values.externalRedis.allowEviction }}
- name: REDIS_ALLOW_EVICTION
  value: "true"
{{- end }}
{{- if and (not $values.redis.enabled) $values.externalRedis.sentinel.enabled }}
- name: REDIS_SENTINEL_MASTER
  value: {{ $values.externalRedis.sentinel.masterName | quote }}
- name: REDIS_SENTINEL_HOSTS
  value: {{ join "," $values.externalRedis.sentinel.hosts | quote }}
{{- end }}
{{- with $values.global.jobModules }}
- name: CONVEYOR_JOB_MODULES
  value: {{ . | quote }}
{{- end }}
{{- with $values.global.redactKeys }}
- name: CONVEYOR_REDACT_KEYS
  value: {{ . | quote }}
{{- end }}
{{- if $values.blobs.url }}
- name: CONVEYOR_BLOBS_URL
  value: {{ $values.blobs.url | quote }}
{{- else if $values.blobs.volume }}
- name: CONVEYOR_BLOBS_URL
  value: "file://{{ include "conveyor.blobsMountPath" . }}"
{{- end }}
{{- with $values.blobs.endpoint }}
- name: CONVEYOR_BLOBS_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $values.blobs.region }}
- name: CONVEYOR_BLOBS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $values.blobs.pathStyle }}
- name: CONVEYOR_BLOBS_PATH_STYLE
  value: "true"
{{- end }}
{{- with $values.blobs.credentialsSecret }}
- name: CONVEYOR_BLOBS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.blobs.accessKeyIdKey }}
- name: CONVEYOR_BLOBS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.blobs.secretAccessKeyKey }}
{{- end }}
{{- /* Both: the workers' mail jobs and the api's uploads (a summary's address) check it. */ -}}
{{- if and $values.smtp.host (not $values.smtp.allowedDomains) }}
{{- fail "smtp.allowedDomains is empty: with smtp.host set, name the domains mail may go to (e.g. [example.com]); mail to any other domain is refused" }}
{{- end }}
{{- with $values.smtp.allowedDomains }}
- name: CONVEYOR_MAIL_ALLOWED_DOMAINS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $values.jobs.documentsMaxBytes }}
- name: CONVEYOR_DOCUMENTS_MAX_BYTES
  value: {{ . | int64 | quote }}
{{- end }}
{{- with $values.jobs.documentsRetentionS }}
- name: CONVEYOR_DOCUMENTS_RETENTION_S
  value: {{ . | int64 | quote }}
{{- end }}
{{- with $values.jobs.documentsChunkChars }}
- name: CONVEYOR_DOCUMENTS_CHUNK_CHARS
  value: {{ . | int64 | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: conveyor-{{ .service }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME),service.version=%s" $root.Chart.AppVersion }}{{ with $values.otel.resourceAttributes }},{{ . }}{{ end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $values.otel.sampler | quote }}
{{- with $values.otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The api's own settings from values: limits, CORS, the metrics port. */}}
{{- define "conveyor.apiEnv" -}}
{{- $api := .Values.api -}}
{{- with $api.metricsPort }}
- name: CONVEYOR_API_METRICS_PORT
  value: {{ . | quote }}
{{- end }}
{{- $hops := $api.trustedProxyHops }}
{{- if kindIs "invalid" $hops }}{{ $hops = ternary 1 0 $api.ingress.enabled }}{{ end }}
- name: CONVEYOR_API_TRUSTED_PROXY_HOPS
  value: {{ $hops | quote }}
- name: CONVEYOR_API_RATE_LIMIT_PER_S
  value: {{ $api.rateLimit.perSecond | quote }}
- name: CONVEYOR_API_RATE_LIMIT_BURST
  value: {{ $api.rateLimit.burst | int64 | quote }}
- name: CONVEYOR_API_MAX_BODY_BYTES
  value: {{ $api.limits.maxBodyBytes | int64 | quote }}
- name: CONVEYOR_API_MAX_JSON_DEPTH
  value: {{ $api.limits.maxJsonDepth | int64 | quote }}
- name: CONVEYOR_API_MAX_PAYLOAD_BYTES
  value: {{ $api.limits.maxPayloadBytes | int64 | quote }}
- name: CONVEYOR_API_MAX_UPLOAD_BYTES
  value: {{ $api.limits.maxUploadBytes | int64 | quote }}
- name: CONVEYOR_API_MAX_FILENAME_CHARS
  value: {{ $api.limits.maxFilenameChars | int64 | quote }}
{{- with $api.corsOrigins }}
- name: CONVEYOR_API_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- end -}}
: mail, the summarizer, scheduled jobs. Their secrets stay out of the api's pods. */}}
{{- define "conveyor.workerEnv" -}}
{{- $values := .Values -}}
{{- with $values.smtp.host }}
- name: CONVEYOR_SMTP_HOST
  value: {{ . | quote }}
- name: CONVEYOR_SMTP_PORT
  value: {{ $values.smtp.port | quote }}
- name: CONVEYOR_SMTP_TLS
  value: {{ $values.smtp.tls | quote }}
{{- end }}
{{- with $values.smtp.username }}
- name: CONVEYOR_SMTP_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with $values.smtp.from }}
- name: CONVEYOR_SMTP_FROM
  value: {{ . | quote }}
{{- end }}
{{- with $values.smtp.passwordSecret }}
- name: CONVEYOR_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.smtp.passwordSecretKey }}
{{- end }}
{{- with $values.summarizer.url }}
- name: CONVEYOR_SUMMARIZER_URL
  value: {{ . | quote }}
{{- end }}
{{- with $values.summarizer.model }}
- name: CONVEYOR_SUMMARIZER_MODEL
  value: {{ . | quote }}
{{- end }}
{{- with $values.summarizer.apiKeySecret }}
- name: CONVEYOR_SUMMARIZER_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.summarizer.apiKeySecretKey }}
{{- end }}
{{- with $values.jobs.digestTo }}
- name: CONVEYOR_DIGEST_TO
  value: {{ . | quote }}
{{- end }}
{{- if not $values.jobs.digestEnabled }}
- name: CONVEYOR_DIGEST_SCHEDULE
  value: "null"
{{- else if $values.jobs.digestSchedule }}
- name: CONVEYOR_DIGEST_SCHEDULE
  value: {{ toJson $values.jobs.digestSchedule | quote }}
{{- end }}
{{- if not $values.jobs.cleanupEnabled }}
- name: CONVEYOR_CLEANUP_SCHEDULE
  value: "null"
{{- else if $values.jobs.cleanupSchedule }}
- name: CONVEYOR_CLEANUP_SCHEDULE
  value: {{ toJson $values.jobs.cleanupSchedule | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every Conveyor pod mounts: /tmp on a read-only root, the Redis CA (only the CA: never the server's key). */}}
{{/* Where a blobs.volume is mounted in the api's and the workers' pods. */}}
{{- define "conveyor.blobsMountPath" -}}
/var/lib/conveyor/blobs
{{- end -}}

{{- define "conveyor.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.blobs.volume }}
- name: blobs
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "conveyor.redis.caSecret" . }}
- name: redis-tls
  secret:
    secretName: {{ . }}
    items:
      - key: {{ include "conveyor.redis.caKey" $ }}
        path: {{ include "conveyor.redis.caKey" $ }}
{{- end }}
{{- end -}}

{{- define "conveyor.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.blobs.volume }}
- name: blobs
  mountPath: {{ include "conveyor.blobsMountPath" . }}
{{- end }}
{{- if include "conveyor.redis.caSecret" . }}
- name: redis-tls
  mountPath: /etc/conveyor/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* A soft spread over nodes and zones: call with (dict "root" $ "component" "api"). */}}
{{- define "conveyor.topologySpread" -}}
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "conveyor.selectorLabels" $ | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The checksum of everything that configures the pods, so a change rolls them. */}}
{{- define "conveyor.configChecksum" -}}
{{- $config := dict "common" (include "conveyor.commonEnv" (dict "root" . "service" "x")) "api" (include "conveyor.apiEnv" .) "apiExtra" .Values.api.env "worker" (include "conveyor.workerEnv" .) "workerExtra" .Values.worker.env -}}
{{- toJson $config | sha256sum -}}
{{- end -}}

{{/*
checkov findings this chart accepts, each with its reason; rendered as
annotations on the workloads so the scanner (and a reader) sees them.
*/}}
{{- define "conveyor.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_15=Images are pinned by tag or digest (image.digest); pullPolicy stays configurable
checkov.io/skip2: CKV_K8S_43=A digest is supported (image.digest) but a tag is the default so installs stay readable
checkov.io/skip3: CKV_K8S_35=The services read their settings, secrets included, from environment variables by design
{{- end -}}

{{/*
The Secret with the api's key list: auth.existingSecret, or the one the chart
generates (templates/api/secret.yaml) with a random admin key. The api reads
it as a file it re-reads while it runs (CONVEYOR_API_KEYS_FILE).
*/}}
{{- define "conveyor.auth.secretName" -}}
{{- default (printf "%s-api-keys" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-") .Values.auth.existingSecret -}}
{{- end -}}

{{- define "conveyor.auth.secretKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretKey -}}
{{- else -}}
api-keys
{{- end -}}
{{- end -}}

{{/* The Secret with one raw, read-only key for `helm test` and KEDA, or nothing when there is none. */}}
{{- define "conveyor.auth.clientSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.clientKeySecret -}}
{{- else if .Values.auth.clientKeySecret -}}
{{- fail "auth.clientKeySecret is only used with auth.existingSecret: the generated Secret holds its own key" -}}
{{- else -}}
{{- include "conveyor.auth.secretName" . -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.auth.clientSecretKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.clientKeySecretKey -}}
{{- else -}}
client-key
{{- end -}}
{{- end -}}

{{/* A URL's port: the one it names, else its scheme's (https 443, http 80). */}}
{{- define "conveyor.urlPort" -}}
{{- $url := urlParse . -}}
{{- $hostPort := splitList ":" $url.host -}}
{{- if gt (len $hostPort) 1 -}}
{{- last $hostPort -}}
{{- else -}}
{{- ternary "443" "80" (eq $url.scheme "https") -}}
{{- end -}}
{{- end -}}

{{/* One egress rule: call with (dict "to" $peers "ports" $ports); no peers means any address, on those ports only. */}}
{{- define "conveyor.egressRule" -}}
- {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .ports }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{/*
Where a service may connect to (networkPolicy.egress): call with
(dict "root" $ "service" "api"). DNS, Redis, the OTLP collector and the blob
store for both; SMTP and the summarizer for the workers, when configured.
*/}}
{{- define "conveyor.egressRules" -}}
{{- $values := .root.Values -}}
{{- $egress := $values.networkPolicy.egress -}}
# DNS.
- {{- with $egress.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range $egress.dns.ports }}
    - port: {{ int . }}
      protocol: UDP
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
# Redis.
{{- if $values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "conveyor.selectorLabels" (dict "root" .root "component" "redis") | nindent 10 }}
  ports:
    - port: {{ int $values.redis.port }}
      protocol: TCP
{{- else }}
{{- $ports := list }}
{{- range $egress.redis.ports }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- if $values.externalRedis.cluster.enabled }}
{{- range $values.externalRedis.cluster.seeds }}
{{- $ports = append $ports (int (last (splitList ":" .))) }}
{{- end }}
{{- end }}
{{ include "conveyor.egressRule" (dict "to" $egress.redis.to "ports" (uniq $ports)) }}
{{- end }}
{{- with $values.otel.endpoint }}
# The OTLP collector.
{{ include "conveyor.egressRule" (dict "to" $egress.otel.to "ports" (list (include "conveyor.urlPort" .))) }}
{{- end }}
{{- if $egress.blobStore.enabled }}
# The blob store.
{{ include "conveyor.egressRule" $egress.blobStore }}
{{- end }}
{{- if eq .service "worker" }}
{{- with $values.smtp.host }}
# The SMTP server.
{{ include "conveyor.egressRule" (dict "to" $egress.smtp.to "ports" (list $values.smtp.port)) }}
{{- end }}
{{- with $values.summarizer.url }}
# The summarizer.
{{ include "conveyor.egressRule" (dict "to" $egress.summarizer.to "ports" (list (include "conveyor.urlPort" .))) }}
{{- end }}
{{- end }}
{{- with $egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
