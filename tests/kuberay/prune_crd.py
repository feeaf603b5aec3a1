"""Vendor the part of a KubeRay CRD's schema that pgen's manifests use, for offline validation.

    python tests/kuberay/prune_crd.py <ray.io_rayclusters.yaml> cluster/kuberay/raycluster.yaml \
        --source "ray-project/kuberay v1.7.0 (<commit>) ray-operator/config/crd/bases/ray.io_rayclusters.yaml" \
        --out tests/kuberay/raycluster.schema.json

Takes the `v1` openAPIV3Schema of the CRD and keeps, at every object, only the properties the
manifests set (a map, a leaf or an `x-kubernetes-preserve-unknown-fields` node is kept whole);
types, enums, patterns, formats and `required` stay as KubeRay wrote them. Objects get
`additionalProperties: false`, as kubectl's strict field validation (its default) rejects an unknown
field where the API server would otherwise drop it. A field the CRD does not know is an error here,
so a misspelt manifest cannot be vendored. Re-run it after adding a field to a manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def crd_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise ValueError(f"CRD {crd['metadata']['name']} has no version {version}")


def prune(schema: dict[str, Any], values: list[Any], path: str, unknown: list[str]) -> dict[str, Any]:
    """`schema` reduced to what `values` (every manifest's value at `path`) use; unknown fields are listed."""
    out = {k: v for k, v in schema.items() if k not in ("properties", "items", "description")}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        dicts = [v for v in values if isinstance(v, dict)]
        keys = sorted({k for d in dicts for k in d})
        open_map = isinstance(schema.get("additionalProperties"), dict)  # an object that also takes any other key
        unknown += [f"{path}.{k}" for k in keys if k not in schema["properties"] and not open_map]
        out["properties"] = {k: prune(schema["properties"][k], [d[k] for d in dicts if k in d], f"{path}.{k}", unknown)
                             for k in keys if k in schema["properties"]}
        out.setdefault("additionalProperties", False)
    elif "properties" in schema:
        out["properties"] = schema["properties"]
    if "items" in schema:
        items = [x for v in values if isinstance(v, list) for x in v]
        out["items"] = prune(schema["items"], items, f"{path}[]", unknown)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crd", help="a KubeRay CRD YAML (ray-operator/config/crd/bases/ray.io_*.yaml)")
    parser.add_argument("manifests", nargs="+", help="manifests whose fields to keep")
    parser.add_argument("--source", required=True, help="where the CRD came from (repository, tag, commit, path)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    crd = yaml.safe_load(Path(args.crd).read_text())
    kind = crd["spec"]["names"]["kind"]
    docs = [d for m in args.manifests for d in yaml.safe_load_all(Path(m).read_text()) if d and d.get("kind") == kind]
    if not docs:
        print(f"prune_crd: no {kind} in {args.manifests}", file=sys.stderr)
        return 2
    unknown: list[str] = []
    schema = prune(crd_schema(crd), docs, kind, unknown)
    if unknown:
        print(f"prune_crd: fields the {kind} CRD does not define: {', '.join(unknown)}", file=sys.stderr)
        return 2
    schema = {"$comment": f"{args.source}: spec.versions[v1].schema.openAPIV3Schema (Apache-2.0), pruned by "
                          f"tests/kuberay/prune_crd.py to the fields of {', '.join(args.manifests)}", **schema}
    Path(args.out).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
