#!/usr/bin/env python3
"""Validates the manifests in this folder offline, for every Kubernetes version given
(default: 1.30, the first with securityContext.appArmorProfile, and the newest the
validator knows).

Built-in kinds are checked strictly (no unknown field) against the Kubernetes schemas
that the kubernetes-validate package ships; ServiceMonitor and PrometheusRule against
schemas/*.v1.json (the Prometheus Operator's fields that these manifests use). Any
other kind, a YAML error or a failed check prints one line per problem and exits 1.
Needs: pip install kubernetes-validate (brings jsonschema and PyYAML). .ci/run installs
it, and tests/deploy_fleet.rs runs this script.

    python3 deploy/kubernetes/validate.py [--kubernetes-version 1.30 ...] [FILE ...]
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "schemas" / "servicemonitor.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): HERE / "schemas" / "prometheusrule.v1.json",
}


def problems(path, versions):
    """Every problem of one file, as 'FILE: KIND/NAME: message' lines."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: {e}"]
    if not docs:
        return [f"{path}: no Kubernetes object"]
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            out.append(f"{path}: not a mapping: {doc!r}"[:200])
            continue
        api, kind = doc.get("apiVersion"), doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{path}: {kind}/{name}"
        schema_file = CRD_SCHEMAS.get((api, kind))
        if schema_file is not None:
            schema = json.loads(schema_file.read_text())
            validator = jsonschema.Draft7Validator(schema)
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                field = ".".join(str(p) for p in e.path) or "(top)"
                out.append(f"{where}: {field}: {e.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                field = ".".join(str(p) for p in e.path) or "(top)"
                out.append(f"{where}: Kubernetes {version}: {field}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                out.append(f"{where}: no schema for {api} {kind} (Kubernetes {version})")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", action="append", dest="versions")
    ap.add_argument("files", nargs="*", type=pathlib.Path)
    args = ap.parse_args()
    versions = args.versions or ["1.30", kubernetes_validate.latest_version()]
    files = args.files or sorted(HERE.glob("*.yaml"))
    found = []
    for f in files:
        found.extend(problems(f, versions))
    for line in found:
        print(line)
    if not found:
        print(f"{len(files)} files valid for Kubernetes {', '.join(versions)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
