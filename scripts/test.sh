#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs the Debian packages the
# tests drive (as root, only when missing), a virtual environment, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k token -x
#
# scripts/test.sh --unit runs only tests/unit/ (in process, no Debian package
# needed, well under 20 s): the quick loop while changing code.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=false
if [[ ${1:-} == --unit ]]; then
  unit=true
  shift
fi

python=${PYTHON:-python3}
if $unit; then
  if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  fi
  exec .venv/bin/pytest -p no:cacheprovider tests/unit "$@"
fi
# The machine's own Go toolchain (newer than Debian's) builds the conformance suite.
[[ -d /usr/local/go/bin ]] && export PATH="/usr/local/go/bin:$PATH"

# program -> Debian package that ships it
declare -A want=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [nginx]=nginx-light
  [htpasswd]=apache2-utils
  [go]=golang-go
  [curl]=curl
  [promtool]=prometheus
  [chromium]=chromium
  [unshare]=util-linux
  [containerd]=containerd
  [ctr]=containerd
  [podman]=podman
)
missing=()
for prog in "${!want[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || [[ -x /usr/sbin/$prog ]] || missing+=("${want[$prog]}")
done
# The PostgreSQL server (tests/integration/test_postgres.py) is off PATH, in /usr/lib/postgresql/<version>/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check proxy tests bench
.venv/bin/ruff format --check proxy tests bench
.venv/bin/lint-imports  # the layers of DESIGN.md, declared in pyproject.toml
.venv/bin/mypy  # strict on proxy/oci, proxy/upstream, proxy/auth; configured in pyproject.toml
# Portal screenshots (tests/integration/test_portal.py) are kept here; .cache/ is gitignored.
export PULLGATE_ARTIFACTS=${PULLGATE_ARTIFACTS:-$PWD/.cache/artifacts/portal}
exec .venv/bin/pytest -p no:cacheprovider "$@"
