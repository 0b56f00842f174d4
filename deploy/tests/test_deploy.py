"""Checks of everything in deploy/, k8s/ and railway.toml that can be checked
without a Docker engine or a Kubernetes cluster: manifests rendered by
`kubectl kustomize` and validated against the Kubernetes schemas
(kubernetes-validate --strict), operator CRD objects checked for the fields
they need, the PrometheusRule kept equal to the alert rules, compose wiring
and lint (dclint), the nginx config (nginx -t), the Dockerfile (hadolint and
its content) and the Railway config.
"""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kube import ROOT, kustomize, load_docs, prometheus_rule

K8S_VERSION = "1.32.0"


def by_kind(docs, kind, name=None):
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert hits, f"no {kind} {name or ''}"
    return hits[0]


def validate(docs, tmp_path):
    files = []
    for i, d in enumerate(docs):
        f = tmp_path / f"{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(d))
        files.append(str(f))
    # The tool installed next to this Python (scripts/test.sh uses a venv).
    tool = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run(
        [str(tool if tool.exists() else "kubernetes-validate"), "--strict", "--kubernetes-version", K8S_VERSION, *files],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "INFO" in out.stdout or out.stdout.strip() == "" or "passed" in out.stdout.lower(), out.stdout


@pytest.mark.parametrize("kustomization", ["k8s/base", "k8s/overlays/example"])
def test_manifests_render_and_validate_strictly(kustomization, tmp_path):
    docs = kustomize(kustomization)
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "StatefulSet", "NetworkPolicy",
    }
    validate(docs, tmp_path)


def test_example_secret_validates_and_is_not_deployed(tmp_path):
    secret = load_docs(ROOT / "k8s/base/secret.example.yaml")
    validate(secret, tmp_path)
    data = secret[0]["stringData"]
    assert len(data["JWT_SECRET"]) >= 32 and len(data["SERVER_API_KEY"]) >= 16, "what the edge accepts"
    assert not any(d["kind"] == "Secret" for d in kustomize("k8s/base"))


def test_overlay_changes_what_it_says():
    docs = kustomize("k8s/overlays/example")
    edge = by_kind(docs, "Deployment", "roomcast-edge")
    assert edge["metadata"]["namespace"] == "roomcast-prod"
    assert edge["spec"]["replicas"] == 5
    container = edge["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/chat/roomcast:0.1.0"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 5


def grace_ms(config):
    return int(config["data"]["ROOMCAST__SERVER__SHUTDOWN_GRACE_MS"])


def test_edge_deployment_is_production_ready():
    docs = kustomize("k8s/base")
    edge = by_kind(docs, "Deployment", "roomcast-edge")
    pod = edge["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert edge["spec"]["replicas"] == 3
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "startupProbe" in c
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = grace_ms(by_kind(docs, "ConfigMap")) / 1000
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, "the drain must finish before SIGKILL"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["topologySpreadConstraints"] and pod["affinity"]["podAntiAffinity"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # No node starts without its secret (and so without auth).
    secret_refs = [s["secretRef"] for s in c["envFrom"] if "secretRef" in s]
    assert secret_refs and all(r.get("optional") is False for r in secret_refs), secret_refs
    config = by_kind(docs, "ConfigMap")["data"]
    assert config["ENVIRONMENT"] == "production" and "ALLOW_UNAUTHENTICATED" not in config
    presence = by_kind(docs, "Deployment", "roomcast-presence")
    assert presence["spec"]["replicas"] == 2
    # The presence service reads the edges' settings (key prefix and all).
    refs = presence["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"configMapRef": {"name": "roomcast-config"}} in refs
    ingress = by_kind(docs, "Ingress")["metadata"]["annotations"]
    assert int(ingress["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 25, "longer than the heartbeat"


def test_monitoring_renders():
    docs = kustomize("k8s/monitoring")
    assert sorted(d["kind"] for d in docs) == ["PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    assert all(d["metadata"]["namespace"] == "roomcast" for d in docs)


def test_service_monitor_matches_the_services():
    docs = kustomize("k8s/base")
    monitors = [d for d in load_docs(ROOT / "k8s/monitoring/servicemonitor.yaml")]
    assert {m["kind"] for m in monitors} == {"ServiceMonitor"}
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        selector = m["spec"]["selector"]["matchLabels"]
        services = [s for s in docs if s["kind"] == "Service" and selector.items() <= s["metadata"].get("labels", {}).items()]
        assert len(services) == 1, f"{m['metadata']['name']} selects {len(services)} services"
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        for ep in m["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics" and ep["interval"]
    # Alerts use job="roomcast-edge": the operator names the job after the Service.
    assert by_kind(docs, "Service", "roomcast-edge")


def test_prometheus_rule_is_built_from_the_alert_rules():
    docs = load_docs(ROOT / "k8s/monitoring/prometheusrule.yaml")
    assert docs == [prometheus_rule()], "regenerate: python3 deploy/tests/kube.py prometheusrule"
    for group in docs[0]["spec"]["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= rule.keys()
            assert rule["annotations"]["runbook"]


def test_compose_wires_the_cluster():
    compose = yaml.safe_load(open(ROOT / "deploy/docker-compose.yml"))
    services = compose["services"]
    assert {"redis", "edge1", "edge2", "edge3", "presence", "nginx", "prometheus", "grafana"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"], "Redis with persistence"
    for name in ["edge1", "edge2", "edge3"]:
        env = services[name]["environment"]
        assert env["NODE_ID"] == name and env["REDIS_URL"].startswith("redis://redis:")
    # Every file the compose file mounts exists in the repo.
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (ROOT / "deploy" / src).resolve().exists(), src
    # nginx balances exactly the edge services; Prometheus scrapes them.
    nginx = re.sub(r"#.*", "", (ROOT / "deploy/nginx.conf").read_text())
    assert set(re.findall(r"server (edge\d):8000", nginx)) == {"edge1", "edge2", "edge3"}
    assert "ip_hash" not in nginx and "sticky" not in nginx, "no sticky sessions"
    prom = yaml.safe_load(open(ROOT / "deploy/prometheus/prometheus-compose.yml"))
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"edge1:8000", "edge2:8000", "edge3:8000", "presence:8001"}


def test_nginx_config_is_valid_and_proxies_websockets(tmp_path):
    if not shutil.which("nginx"):
        pytest.fail("nginx is required (scripts/test.sh installs it)")
    conf = (ROOT / "deploy/nginx.conf").read_text()
    for directive in ["proxy_http_version 1.1", "proxy_set_header Upgrade $http_upgrade",
                      "proxy_set_header Connection $connection_upgrade", "proxy_buffering off"]:
        assert directive in conf
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s", conf).group(1))
    assert read_timeout > 25, "idle timeout longer than the server's heartbeat interval"
    local = re.sub(r"server edge\d:8000", "server 127.0.0.1:1", conf).replace("listen 80;", "listen 127.0.0.1:1;")
    (tmp_path / "nginx.conf").write_text(local)
    out = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                          "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def tool(name):
    """A linter installed next to this Python (the venv of scripts/test.sh) or
    in deploy/tests/node_modules."""
    for candidate in [Path(sys.executable).parent / name, ROOT / "deploy/tests/node_modules/.bin" / name]:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is required (scripts/test.sh installs it)")
    return found


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), str(ROOT / "deploy/Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_passes_dclint():
    out = subprocess.run([tool("dclint"), "--max-warnings", "0", str(ROOT / "deploy/docker-compose.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_publishes_ports_on_loopback_only():
    compose = yaml.safe_load(open(ROOT / "deploy/docker-compose.yml"))
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface"


def test_dockerfile():
    text = (ROOT / "deploy/Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    assert "distroless" in stages[-1] or "slim" in stages[-1], "small runtime image"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith("0") and user[-1] != "root"
    assert re.search(r"^HEALTHCHECK", text, re.M)
    assert "--locked" in text
    for binary in ["roomcast-edge", "roomcast-presence"]:
        assert f"-p {binary}" in text and f"/usr/local/bin/" in text
    # What it copies exists.
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part


def test_railway_config():
    cfg = tomllib.loads((ROOT / "railway.toml").read_text())
    assert cfg["build"]["dockerfilePath"] == "deploy/Dockerfile"
    assert (ROOT / cfg["build"]["dockerfilePath"]).exists()
    assert cfg["deploy"]["healthcheckPath"] == "/ready"
    assert cfg["deploy"]["numReplicas"] > 1
