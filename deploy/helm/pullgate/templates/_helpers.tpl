{{/* Names and labels. */}}
{{- define "pullgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pullgate.fullname" -}}
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

{{- define "pullgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pullgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pullgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pullgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pullgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pullgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pullgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Several pods: a fixed count above one, or an autoscaler. */}}
{{- define "pullgate.several" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/* Where pods find what the chart mounts. */}}
{{- define "pullgate.keysFile" -}}
{{- if .Values.keyring.existingSecret -}}
/run/secrets/pullgate-keyring/{{ .Values.keyring.key }}
{{- else -}}
/var/lib/pullgate/keys.yaml
{{- end -}}
{{- end -}}

{{- define "pullgate.store" -}}
{{- if eq .Values.store.type "sqlite" -}}
sqlite:///var/lib/pullgate/pullgate.db
{{- else -}}
{{- $pg := .Values.store.postgresql -}}
{{- $url := printf "postgresql://%s@%s:%d/%s" $pg.user $pg.host (int $pg.port) $pg.database -}}
{{- if $pg.sslmode -}}{{- $url = printf "%s?sslmode=%s" $url $pg.sslmode -}}{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/*
The configuration file: the free-form `config` values with the keys the chart
must know (listeners, store, keyring, TLS files, cache backend) set from the
structured values.
*/}}
{{- define "pullgate.config" -}}
{{- $cfg := deepCopy (default (dict) .Values.config) -}}
{{- $proxy := default (dict) $cfg.proxy -}}
{{- $_ := set $proxy "listen" (printf "0.0.0.0:%d" (int .Values.proxy.port)) -}}
{{- if .Values.proxy.tls.enabled -}}
{{- $_ := set $proxy "tls_cert_file" "/run/secrets/pullgate-tls/tls.crt" -}}
{{- $_ := set $proxy "tls_key_file" "/run/secrets/pullgate-tls/tls.key" -}}
{{- end -}}
{{- $_ := set $cfg "proxy" $proxy -}}
{{- $admin := default (dict) $cfg.admin -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int .Values.admin.port)) -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- $_ := set $cfg "store" (include "pullgate.store" .) -}}
{{- $_ := set $cfg "keys" (dict "file" (include "pullgate.keysFile" .)) -}}
{{- if .Values.cache.backend -}}
{{- $cache := default (dict) $cfg.cache -}}
{{- $_ := set $cache "backend" .Values.cache.backend -}}
{{- if eq .Values.cache.backend "s3" -}}
{{- $s3 := .Values.cache.s3 -}}
{{- $c := dict "bucket" $s3.bucket "prefix" (default "" $s3.prefix) "redirect" $s3.redirect "secret_access_key_file" (printf "/run/secrets/pullgate-s3/%s" $s3.secretAccessKey.key) -}}
{{- if $s3.endpointUrl -}}{{- $_ := set $c "endpoint_url" $s3.endpointUrl -}}{{- end -}}
{{- if $s3.region -}}{{- $_ := set $c "region" $s3.region -}}{{- end -}}
{{- if $s3.accessKeyId -}}{{- $_ := set $c "access_key_id" $s3.accessKeyId -}}{{- end -}}
{{- $_ := set $cache "s3" $c -}}
{{- end -}}
{{- $_ := set $cfg "cache" $cache -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Refuse what would not work or would not be safe, saying why. */}}
{{- define "pullgate.validate" -}}
{{- $v := .Values -}}
{{- if not $v.image.repository -}}
{{- fail "image.repository: set it to where you pushed the pullgate image (built from the repository's Dockerfile outside its CI); the chart names no default registry" -}}
{{- end -}}
{{- if not (has $v.store.type (list "sqlite" "postgresql")) -}}
{{- fail (printf "store.type: must be sqlite or postgresql, got %q" $v.store.type) -}}
{{- end -}}
{{- if lt (int $v.replicaCount) 1 -}}
{{- fail "replicaCount: must be at least 1" -}}
{{- end -}}
{{- $w := $v.workers -}}
{{- if not (and (has (kindOf $w) (list "int" "int64" "float64")) (eq (toString $w) (toString (int $w))) (ge (int $w) 1) (le (int $w) 64)) -}}
{{- fail "workers: a whole number from 1 to 64 (pullgate processes per pod, serve --workers)" -}}
{{- end -}}
{{- if eq $v.store.type "sqlite" -}}
{{- if gt (int $v.replicaCount) 1 -}}
{{- fail (printf "replicaCount: %d replicas on SQLite: SQLite serves one process; run several replicas with store.type=postgresql (and cache.backend=s3 so they share one cache)" (int $v.replicaCount)) -}}
{{- end -}}
{{- if $v.autoscaling.enabled -}}
{{- fail "autoscaling.enabled: an autoscaler would start several replicas on SQLite, which serves one process; use store.type=postgresql" -}}
{{- end -}}
{{- else -}}
{{- $pg := $v.store.postgresql -}}
{{- if not $pg.host -}}
{{- fail "store.postgresql.host: required with store.type=postgresql" -}}
{{- end -}}
{{- if or (contains ":" (toString $pg.user)) (contains "@" (toString $pg.user)) (contains "@" (toString $pg.host)) -}}
{{- fail "store.postgresql.user: a user name only; the password comes from store.postgresql.passwordSecret, never the URL" -}}
{{- end -}}
{{- if not $v.keyring.existingSecret -}}
{{- fail "keyring.existingSecret: pods on PostgreSQL have no volume of their own and several replicas must share one keyring: create a Secret holding keys.yaml (README, Deploying) and name it here" -}}
{{- end -}}
{{- end -}}
{{- if and (include "pullgate.several" .) (not $v.keyring.existingSecret) -}}
{{- fail "keyring.existingSecret: several replicas must share one keyring: create a Secret holding keys.yaml and name it here" -}}
{{- end -}}
{{- if $v.autoscaling.enabled -}}
{{- if or (lt (int $v.autoscaling.minReplicas) 1) (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) -}}
{{- fail "autoscaling: need 1 <= minReplicas <= maxReplicas" -}}
{{- end -}}
{{- end -}}
{{- if and $v.proxy.tls.enabled (not $v.proxy.tls.secretName) -}}
{{- fail "proxy.tls.secretName: required with proxy.tls.enabled (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if eq (int $v.proxy.port) (int $v.admin.port) -}}
{{- fail "admin.port: must differ from proxy.port (the admin face is never on the proxy listener)" -}}
{{- end -}}
{{- if and $v.cache.backend (not (has $v.cache.backend (list "none" "filesystem" "s3"))) -}}
{{- fail (printf "cache.backend: must be none, filesystem or s3, got %q" $v.cache.backend) -}}
{{- end -}}
{{- if eq $v.cache.backend "s3" -}}
{{- if not $v.cache.s3.bucket -}}{{- fail "cache.s3.bucket: required with cache.backend=s3" -}}{{- end -}}
{{- if not $v.cache.s3.secretAccessKey.secretName -}}
{{- fail "cache.s3.secretAccessKey.secretName: required with cache.backend=s3 (the secret access key, mounted as a file)" -}}
{{- end -}}
{{- end -}}
{{- $cfg := default (dict) $v.config -}}
{{- $owned := dict "proxy" (list "listen" "tls_cert_file" "tls_key_file") "admin" (list "listen") "cache" (list "backend" "s3") -}}
{{- range $section, $keys := $owned -}}
{{- $sec := get $cfg $section -}}
{{- if kindIs "map" $sec -}}
{{- range $keys -}}
{{- if hasKey $sec . -}}
{{- fail (printf "config.%s.%s: set by the chart (from %s values); remove it from config" $section . $section) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range list "store" "keys" -}}
{{- if hasKey $cfg . -}}
{{- fail (printf "config.%s: set by the chart (store.*, keyring.* values); remove it from config" .) -}}
{{- end -}}
{{- end -}}
{{- $text := toYaml $cfg -}}
{{- $secretKey := regexFind "(?m)^[ \\t]*(- )?(password|token|secret|secret_access_key|license_id|private_key|api_token)[ \\t]*:" $text -}}
{{- if $secretKey -}}
{{- fail (printf "config: %q: a secret is never written in the config (it is a ConfigMap); reference it with <key>_file (a Secret mounted through secretFiles) or <key>_env (an environment variable from secretEnv)" (regexReplaceAll "[\\s:-]" $secretKey "")) -}}
{{- end -}}
{{- if regexMatch "[A-Za-z][A-Za-z0-9+.-]*://[^/\\s@:]+:[^/\\s@]*@" $text -}}
{{- fail "config: a URL carries a password (scheme://user:password@host); give the secret by reference instead" -}}
{{- end -}}
{{- range $v.networkPolicy.admin.from -}}
{{- if not . -}}
{{- fail "networkPolicy.admin.from: an empty peer would let everyone reach the admin port; name namespaces or pods" -}}
{{- end -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled $v.networkPolicy.enabled (not $v.networkPolicy.admin.from) -}}
{{- fail "serviceMonitor.enabled: Prometheus could not reach /metrics; name its namespace or pods in networkPolicy.admin.from" -}}
{{- end -}}
{{- end -}}
