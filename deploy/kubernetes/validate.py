#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline, naming the source file and field of each problem.

    kubectl kustomize deploy/kubernetes/overlays/prod > prod.yaml
    python deploy/kubernetes/validate.py prod.yaml              # problems as text, exit 1 if any
    python deploy/kubernetes/validate.py --json --root DIR prod.yaml

Every object is checked against a schema, with unknown fields rejected (as `kubectl apply` does
with its default strict field validation):

- Kubernetes' own kinds against the schemas of Kubernetes KUBERNETES_VERSION that the PyPI
  package kubernetes-validate ships (pinned in scripts/requirements.txt);
- custom resources against the schemas in schemas/ beside this file, written from the published
  CRDs (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor), one file per
  `<kind>_<group>_<version>.json`;
- a kind with neither is skipped, and the reason is reported.

Where an object came from is read from kustomize's `config.kubernetes.io/origin` annotation
(`buildMetadata: [originAnnotations]` in the kustomization that rendered it): `--root` is that
kustomization's folder, and paths are printed relative to the current directory.

With --json, one JSON object goes to standard output: `objects` (each rendered object with its
`origin`), `problems` (`origin`, `object`, `field`, `message`), `skipped` (`object`, `reason`) and
`kubernetes_version`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

# The Kubernetes release whose schemas the manifests must satisfy: the oldest the manifests are
# written for (gRPC probes, matchLabelKeys in topology spread and PodDisruptionBudget policy/v1
# are all there).
KUBERNETES_VERSION = "1.32.0"

SCHEMAS = Path(__file__).resolve().parent / "schemas"
ORIGIN = "config.kubernetes.io/origin"


def field_path(path, error=None):
    """`spec.template.spec.containers[0].ports` from a jsonschema path; for an unknown field, the
    field itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    if error is not None and error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unknown = [k for k in error.instance if k not in known]
        if len(unknown) == 1:
            text = f"{text}.{unknown[0]}" if text else unknown[0]
    return text or "(the object)"


def origin_of(obj, root):
    """The file an object came from, relative to the current directory, from kustomize's annotation."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(ORIGIN)
    if not raw:
        return "(rendered)"
    origin = yaml.safe_load(raw) or {}
    path = origin.get("path") or origin.get("configuredIn")
    if not path:
        return "(rendered)"
    resolved = os.path.normpath(os.path.join(root, path))
    return os.path.relpath(resolved)


def crd_schema(obj):
    api = obj.get("apiVersion", "")
    if "/" not in api:
        return None, None
    group, version = api.split("/", 1)
    path = SCHEMAS / f"{obj.get('kind', '').lower()}_{group}_{version}.json"
    if not path.is_file():
        return None, path
    return json.loads(path.read_text()), path


def kubernetes_validator(obj):
    """A validator of `obj`'s kind from kubernetes-validate's schemas of KUBERNETES_VERSION, strict.

    kubernetes_validate.validate() stops at the first error; this builds the same validator (as
    that function of the pinned release does) so that every error is reported at once.

    Raises kubernetes_validate's SchemaNotFoundError for a kind it has no schema for.
    """
    wanted = kv.major_minor(KUBERNETES_VERSION)
    version = [v for v in kv.all_versions() if kv.major_minor(v) <= wanted][-1]
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    # rbac.authorization.k8s.io/v1 -> rbac-v1, apps/v1 -> apps-v1, v1 -> v1
    api = obj["apiVersion"].split("/")
    api = f"{api[0].split('.')[0]}-{api[1]}" if len(api) == 2 else api[0]
    try:
        schema = kv.schema_contents(f"{schema_dir}/{obj['kind'].lower()}-{api}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        raise kv.SchemaNotFoundError(wanted, obj["kind"], obj["apiVersion"]) from None
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", KUBERNETES_VERSION)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry), f"Kubernetes {kv.major_minor(version)}"


def check(obj, origin):
    """Problems of one object, and the reason it was skipped (or None)."""
    name = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    problems = []

    def problem(field, message):
        problems.append({"origin": origin, "object": name, "field": field, "message": message})

    for key in ("apiVersion", "kind", "metadata"):
        if key not in obj:
            problem(key, "missing")
    if problems:
        return problems, None
    schema, schema_path = crd_schema(obj)
    if schema is not None:
        validator, against = jsonschema.Draft202012Validator(schema), f"schema {schema_path.name}"
    else:
        try:
            validator, against = kubernetes_validator(obj)
        except kv.SchemaNotFoundError:
            return problems, (
                f"no schema for {obj['apiVersion']} {obj['kind']}: not a Kubernetes "
                f"{KUBERNETES_VERSION} kind, and no {schema_path.name if schema_path else 'file'} "
                f"in {SCHEMAS} (add the schema of its CRD there to check it)"
            )
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        problem(field_path(error.path, error), f"{error.message} ({against})")
    return problems, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="rendered manifests (YAML, several documents)")
    parser.add_argument("--root", default=".", help="folder of the kustomization that rendered them")
    parser.add_argument("--json", action="store_true", help="one JSON report on standard output")
    args = parser.parse_args()

    objects, problems, skipped = [], [], []
    for file in args.files:
        with open(file) as f:
            try:
                documents = [d for d in yaml.safe_load_all(f) if d]
            except yaml.YAMLError as error:
                problems.append({"origin": file, "object": "(file)", "field": "", "message": str(error)})
                continue
        for obj in documents:
            origin = origin_of(obj, args.root)
            found, reason = check(obj, origin)
            problems.extend(found)
            if reason:
                skipped.append({"object": f"{obj.get('kind')}/{obj['metadata'].get('name')}", "reason": reason})
            objects.append({"origin": origin, "object": obj})

    if args.json:
        json.dump(
            {
                "kubernetes_version": KUBERNETES_VERSION,
                "objects": objects,
                "problems": problems,
                "skipped": skipped,
            },
            sys.stdout,
        )
        return 0
    for p in problems:
        print(f"{p['origin']}: {p['object']}: {p['field']}: {p['message']}")
    for s in skipped:
        print(f"skipped {s['object']}: {s['reason']}")
    print(f"{len(objects)} objects, {len(problems)} problems, {len(skipped)} skipped "
          f"(Kubernetes {KUBERNETES_VERSION})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
