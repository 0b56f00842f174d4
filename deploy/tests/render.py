"""Renders the kustomizations in k8s/ the way `kubectl kustomize` would, for
the subset of kustomize they use: resources (files and directories), namespace,
labels, images, replicas and JSON 6902 patches. No kustomize binary is
available where the tests run; this keeps the rendering checkable anyway.

    python3 deploy/tests/render.py k8s/overlays/example     # print the manifests
    python3 deploy/tests/render.py prometheusrule           # regenerate the PrometheusRule
"""

import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Kinds that live in no namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _pointer(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(doc, ops):
    for op in ops:
        parts = _pointer(op["path"])
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(idx, op["value"])
            elif kind == "replace":
                parent[idx] = op["value"]
            elif kind == "remove":
                del parent[idx]
            else:
                raise ValueError(f"unsupported op {kind}")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and last not in parent:
                    raise KeyError(f"replace of missing path {op['path']}")
                parent[last] = op["value"]
            elif kind == "remove":
                del parent[last]
            else:
                raise ValueError(f"unsupported op {kind}")


def _set_image(container, images):
    name, _, tag = container["image"].partition(":")
    for img in images:
        if img["name"] == name:
            container["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"


def render(directory):
    directory = Path(directory)
    k = yaml.safe_load(open(directory / "kustomization.yaml"))
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "replicas", "patches"}
    unknown = set(k) - known
    if unknown:
        raise ValueError(f"{directory}: renderer does not support {sorted(unknown)}")
    docs = []
    for res in k.get("resources", []):
        p = directory / res
        docs.extend(render(p) if p.is_dir() else load_docs(p))
    docs = copy.deepcopy(docs)
    for d in docs:
        if "namespace" in k and d["kind"] not in CLUSTER_SCOPED:
            d["metadata"]["namespace"] = k["namespace"]
        if d["kind"] == "Namespace" and "namespace" in k:
            d["metadata"]["name"] = k["namespace"]
        for label in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeSelectors"):
                raise ValueError("includeSelectors is not supported")
        spec = d.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            _set_image(c, k.get("images", []))
        for r in k.get("replicas", []):
            if d["metadata"]["name"] == r["name"] and "replicas" in spec:
                spec["replicas"] = r["count"]
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"patch target {target} matches nothing")
        for d in hits:
            apply_json6902(d, ops)
    return docs


def prometheus_rule():
    alerts = yaml.safe_load(open(ROOT / "deploy/prometheus/alerts.yml"))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "roomcast", "labels": {"app.kubernetes.io/name": "roomcast", "release": "prometheus"}},
        "spec": {"groups": alerts["groups"]},
    }


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "k8s/base"
    if arg == "prometheusrule":
        print("# Generated from deploy/prometheus/alerts.yml (the test suite checks they match):")
        print("#   python3 deploy/tests/render.py prometheusrule > k8s/monitoring/prometheusrule.yaml")
        print(yaml.safe_dump(prometheus_rule(), sort_keys=False, width=110), end="")
    else:
        print(yaml.safe_dump_all(render(ROOT / arg), sort_keys=False), end="")
