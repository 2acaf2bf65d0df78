"""Derive the JSON Schemas under this folder from a KubeRay release's CRDs (see SOURCE.md).

    git -C <kuberay clone> show v1.7.0:ray-operator/config/crd/bases/ray.io_rayjobs.yaml > rayjobs.yaml  # etc.
    python tests/schemas/kuberay/derive.py rayclusters.yaml rayjobs.yaml rayservices.yaml raycronjobs.yaml

Each CRD's ``openAPIV3Schema`` (version v1) becomes ``$defs/<kind>`` of ``kuberay.json`` here, changed only so that a plain
JSON Schema validator reads it the way the API server does with strict field validation (kubectl's default):
descriptions dropped; every object that lists its properties and does not preserve unknown fields refuses
other keys (the API server reports them as unknown fields); object metadata gets the ObjectMeta fields the
manifests use; CEL rules (``x-kubernetes-validations``: immutability and deletion-rule exclusivity, nothing the
manifests here touch) dropped. Identical subtrees (the Pod template appears several times in each CRD) are
stored once under ``$defs`` and referenced, so the file stays small without losing any constraint. Validate a
manifest against ``{"$ref": "#/$defs/<kind>", "$defs": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
_MIN_SHARED = 2000  # bytes of JSON: smaller repeated subtrees are cheaper inline than as a $ref
_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def strict(node):
    """The openAPIV3Schema node as JSON Schema: no descriptions or CEL, unknown keys refused."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k not in ("description", "x-kubernetes-validations")}
    if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _key(node) -> str:
    return hashlib.sha256(json.dumps(node, sort_keys=True).encode()).hexdigest()[:16]


def share(kinds: dict[str, dict]) -> dict:
    """Replace every repeated object subtree larger than _MIN_SHARED with a $ref to one copy in $defs."""
    counts: dict[str, int] = {}

    # Only schemas are shared: the value of ``properties`` is a map of names to schemas, not a schema.
    def count(node, is_map=False):
        if isinstance(node, dict):
            if not is_map and len(json.dumps(node)) >= _MIN_SHARED:
                counts[_key(node)] = counts.get(_key(node), 0) + 1
            for k, v in node.items():
                count(v, is_map=not is_map and k == "properties")
        elif isinstance(node, list):
            for v in node:
                count(v)

    count(kinds)
    defs: dict[str, dict] = {}

    def rewrite(node, top=False, is_map=False):
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if not isinstance(node, dict):
            return node
        inner = {k: (lambda v, k=k: rewrite(v, is_map=not is_map and k == "properties")) for k in node}
        key = _key(node) if not is_map and len(json.dumps(node)) >= _MIN_SHARED else None
        if not top and key and counts.get(key, 0) > 1:
            if key not in defs:
                defs[key] = {}  # placeholder first: a subtree never contains itself
                defs[key] = {k: inner[k](v) for k, v in node.items()}
            return {"$ref": f"#/$defs/{key}"}
        return {k: inner[k](v) for k, v in node.items()}

    tops = {kind: rewrite(schema, top=True) for kind, schema in kinds.items()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {**defs, **tops}}


def derive(crd_path: Path) -> tuple[str, dict]:
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = _METADATA
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return crd["spec"]["names"]["kind"], schema


def main(paths: list[str]) -> None:
    doc = share(dict(derive(Path(p)) for p in paths))
    out = HERE / "kuberay.json"
    out.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
