#!/usr/bin/env bash
# Runs the proxy on the embedded SQLite default with the example config.
# Proxy on 127.0.0.1:8080, admin on 127.0.0.1:8081. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
mkdir -p var
# Example secrets, made once and kept in var/ (mode 0600) so restarts keep them.
for name in EXAMPLE_LICENSE_ID ACME_API_TOKEN; do
  f="var/${name,,}"
  [[ -s $f ]] || (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_hex(16))' >"$f")
  export "$name=${!name:-$(cat "$f")}"
done
echo "example license ID is in var/example_license_id; try:"
echo "  skopeo inspect --tls-verify=false --creds LICENSE_ID:\$(cat var/example_license_id) docker://localhost:8080/proxy/myapp/library/alpine:latest"
exec .venv/bin/pullgate serve --config config/example.yaml "$@"
