#!/usr/bin/env bash
# Installs what rewardfleet needs to build, run and test, then exports the build environment.
# Idempotent and quick when everything is there. Source it (`. scripts/setup.sh`) or run it.
#
#   RF_HOME   where the virtualenv lives (default: ~/.cache/rewardfleet)
#   RF_VENV   the virtualenv with torch (default: $RF_HOME/venv)
set -euo pipefail

RF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RF_HOME="${RF_HOME:-$HOME/.cache/rewardfleet}"
RF_VENV="${RF_VENV:-$RF_HOME/venv}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "setup: need root to run: $*" >&2; return 1
  fi
}

# nats-server (JetStream) from Debian's packages: the tests start their own servers.
if ! command -v nats-server >/dev/null 2>&1; then
  echo "setup: installing nats-server"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi

# Prometheus and promtool from Debian's packages: the observability tests scrape the fleet with them.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing prometheus"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus
fi

# kubectl (with its built-in kustomize) renders the Kubernetes manifests of deploy/ for their
# tests. Debian's own kubernetes-client is far too old (kustomize v2); install kubectl where a
# configured package source offers it, else the deploy tests say why they skip.
if ! command -v kubectl >/dev/null 2>&1; then
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "setup: installing kubectl"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubectl
  else
    echo "setup: no kubectl package here; tests/tests/deploy.rs will skip (install kubectl 1.27+ to run it)" >&2
  fi
fi

# The Rust toolchain and its components.
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain found; install one with rustup (stable, 1.89 or newer)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# libtorch comes from the torch wheel in a virtualenv (tch links it: LIBTORCH_USE_PYTORCH=1).
stamp="$RF_VENV/.rewardfleet-requirements"
if [ ! -x "$RF_VENV/bin/python" ]; then
  echo "setup: creating the virtualenv $RF_VENV"
  mkdir -p "$(dirname "$RF_VENV")"
  python3 -m venv "$RF_VENV"
fi
if ! cmp -s "$RF_ROOT/scripts/requirements.txt" "$stamp"; then
  echo "setup: installing Python packages (torch is large: this takes a while once)"
  "$RF_VENV/bin/python" -m pip install -q --upgrade pip
  "$RF_VENV/bin/python" -m pip install -q -r "$RF_ROOT/scripts/requirements.txt"
  cp "$RF_ROOT/scripts/requirements.txt" "$stamp"
fi

# The Python client and what its tests need (clients/python/requirements-*.txt; the trainer
# libraries without their training stacks), with the client installed in place.
py_stamp="$RF_VENV/.rewardfleet-python-requirements"
py_reqs="$(cat "$RF_ROOT/clients/python/requirements-test.txt" "$RF_ROOT/clients/python/requirements-nodeps.txt" "$RF_ROOT/clients/python/pyproject.toml")"
if [ "$py_reqs" != "$(cat "$py_stamp" 2>/dev/null)" ]; then
  echo "setup: installing the Python client's test packages"
  "$RF_VENV/bin/python" -m pip install -q -r "$RF_ROOT/clients/python/requirements-test.txt"
  "$RF_VENV/bin/python" -m pip install -q --no-deps -r "$RF_ROOT/clients/python/requirements-nodeps.txt"
  "$RF_VENV/bin/python" -m pip install -q --no-deps -e "$RF_ROOT/clients/python"
  printf '%s' "$py_reqs" > "$py_stamp"
fi

export LIBTORCH_USE_PYTORCH=1
export PATH="$RF_VENV/bin:$PATH"
export RF_PYTHON="$RF_VENV/bin/python"
