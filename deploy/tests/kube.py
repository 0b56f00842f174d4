"""What the deployment checks share: manifests rendered by the real
`kubectl kustomize`, and the PrometheusRule generated from the alert rules.

    python3 deploy/tests/kube.py prometheusrule > k8s/monitoring/prometheusrule.yaml
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomize(directory):
    """The objects `kubectl kustomize` renders from `directory`. Without
    kubectl the calling test is skipped, and says so."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the k8s/ kustomizations were NOT rendered or validated")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / directory)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def prometheus_rule():
    alerts = yaml.safe_load(open(ROOT / "deploy/prometheus/alerts.yml"))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "roomcast", "labels": {"app.kubernetes.io/name": "roomcast", "release": "prometheus"}},
        "spec": {"groups": alerts["groups"]},
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["prometheusrule"]:
        sys.exit("usage: kube.py prometheusrule   (render manifests with: kubectl kustomize k8s/base)")
    print("# Generated from deploy/prometheus/alerts.yml (the test suite checks they match):")
    print("#   python3 deploy/tests/kube.py prometheusrule > k8s/monitoring/prometheusrule.yaml")
    print(yaml.safe_dump(prometheus_rule(), sort_keys=False, width=110), end="")
