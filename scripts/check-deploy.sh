#!/usr/bin/env bash
# Renders every overlay of deploy/kubernetes (and one with every optional component) with
# `kubectl kustomize` and validates each object offline with deploy/kubernetes/validate.py:
# Kubernetes' schemas from the pinned kubernetes-validate, the CRD schemas in
# deploy/kubernetes/schemas. Problems name the source file and the field; exit 1 if any.
#
#   scripts/check-deploy.sh                      # every overlay
#   scripts/check-deploy.sh overlays/prod ...    # these (paths under deploy/kubernetes)
#
# The full check, with the manifests run against the real binary and nats-server, is
# `cargo test -p rewardfleet-e2e --test deploy` (scripts/test.sh runs it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${RF_PYTHON:-$HOME/.cache/rewardfleet/venv/bin/python}"
command -v kubectl >/dev/null || { echo "check-deploy: kubectl is not installed" >&2; exit 1; }
[ -x "$python" ] || python=python3

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(overlays/dev overlays/prod overlays/gpu "overlays/gpu+components/servicemonitor+components/hpa/cpu+components/hpa/judge+components/hpa/gpu")
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
for target in "${targets[@]}"; do
  # A wrapper kustomization: the target, its components after a '+', and origin annotations so
  # that every problem names the file it came from.
  IFS=+ read -r -a parts <<<"$target"
  wrapper="$tmp/$(echo "$target" | tr '/+' '__')"
  mkdir -p "$wrapper"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "buildMetadata: [originAnnotations]"
    echo "resources: [$(realpath --relative-to="$wrapper" "$root/deploy/kubernetes/${parts[0]}")]"
    if [ ${#parts[@]} -gt 1 ]; then
      echo "components:"
      for c in "${parts[@]:1}"; do
        echo "  - $(realpath --relative-to="$wrapper" "$root/deploy/kubernetes/$c")"
      done
    fi
  } >"$wrapper/kustomization.yaml"
  echo "== $target"
  kubectl kustomize "$wrapper" >"$wrapper/rendered.yaml"
  (cd "$root" && "$python" deploy/kubernetes/validate.py --root "$wrapper" "$wrapper/rendered.yaml") || status=1
done
exit $status
