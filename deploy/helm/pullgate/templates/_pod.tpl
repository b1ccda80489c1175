{{/* The pod template shared by the StatefulSet (SQLite) and the Deployment (PostgreSQL). */}}
{{- define "pullgate.podTemplate" -}}
metadata:
  labels:
    {{- include "pullgate.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A config change rolls the pods.
    checksum/config: {{ include "pullgate.config" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "pullgate.serviceAccountName" . }}
  # pullgate never talks to the Kubernetes API.
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: pullgate
      image: {{ include "pullgate.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: [serve, --config, /etc/pullgate/config.yaml{{ if gt (int .Values.workers) 1 }}, --workers, {{ .Values.workers | quote }}{{ end }}]
      env:
        - name: PULLGATE_CONFIG
          value: /etc/pullgate/config.yaml
        {{- if and (eq .Values.store.type "postgresql") .Values.store.postgresql.passwordSecret.name }}
        # asyncpg reads the password from the environment: it is never in the URL.
        - name: PGPASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ .Values.store.postgresql.passwordSecret.name }}
              key: {{ .Values.store.postgresql.passwordSecret.key }}
        {{- end }}
        {{- range .Values.secretEnv }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef:
              name: {{ .secretName }}
              key: {{ .key }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: proxy
          containerPort: {{ .Values.proxy.port }}
          protocol: TCP
        - name: admin
          containerPort: {{ .Values.admin.port }}
          protocol: TCP
      startupProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet: {path: /readyz, port: admin}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - {name: config, mountPath: /etc/pullgate, readOnly: true}
        - {name: data, mountPath: /var/lib/pullgate}
        - {name: tmp, mountPath: /tmp}
        {{- if .Values.keyring.existingSecret }}
        - {name: keyring, mountPath: /run/secrets/pullgate-keyring, readOnly: true}
        {{- end }}
        {{- if .Values.proxy.tls.enabled }}
        - {name: tls, mountPath: /run/secrets/pullgate-tls, readOnly: true}
        {{- end }}
        {{- if eq .Values.cache.backend "s3" }}
        - {name: s3, mountPath: /run/secrets/pullgate-s3, readOnly: true}
        {{- end }}
        {{- range .Values.secretFiles }}
        - name: {{ printf "secret-%s" .name | trunc 63 | trimSuffix "-" }}
          mountPath: /run/secrets/pullgate/{{ .name }}
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "pullgate.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.scratch.sizeLimit }}
    {{- if eq .Values.store.type "postgresql" }}
    - name: data
      emptyDir:
        sizeLimit: {{ .Values.scratch.sizeLimit }}
    {{- else if .Values.store.sqlite.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.store.sqlite.persistence.existingClaim }}
    {{- end }}
    {{- if .Values.keyring.existingSecret }}
    # Mounted as a directory (no subPath) so an updated Secret reaches the pods and
    # pullgate reloads the keyring; readable by the pod's group only.
    - name: keyring
      secret:
        secretName: {{ .Values.keyring.existingSecret }}
        defaultMode: 0440
        items:
          - {key: {{ .Values.keyring.key }}, path: {{ .Values.keyring.key }}}
    {{- end }}
    {{- if .Values.proxy.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.proxy.tls.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- if eq .Values.cache.backend "s3" }}
    - name: s3
      secret:
        secretName: {{ .Values.cache.s3.secretAccessKey.secretName }}
        defaultMode: 0440
        items:
          - {key: {{ .Values.cache.s3.secretAccessKey.key }}, path: {{ .Values.cache.s3.secretAccessKey.key }}}
    {{- end }}
    {{- range .Values.secretFiles }}
    - name: {{ printf "secret-%s" .name | trunc 63 | trimSuffix "-" }}
      secret:
        secretName: {{ .secretName }}
        defaultMode: 0440
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
