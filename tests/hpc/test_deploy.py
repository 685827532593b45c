"""Kubernetes manifests (deploy/kubernetes) and container files (containers/), validated offline.

Each manifest is read into the ``kubernetes`` client's model for its kind (generated from the
Kubernetes OpenAPI schema; required fields are enforced) and written back: a field the schema
does not know (a typo, a wrong nesting) would be dropped, so the round trip must give back the
document unchanged.  No cluster runs here: scheduling, probes, volume binding and the
NetworkPolicy's enforcement are not exercised.
"""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from .conftest import REPO

kubernetes = pytest.importorskip(
    "kubernetes", reason="needs the kubernetes package: pip install 'fitserve[kubernetes]'"
)

DEPLOY = REPO / "deploy" / "kubernetes"
CONTAINERS = REPO / "containers"
MODELS = {
    "Namespace": "V1Namespace",
    "Secret": "V1Secret",
    "ConfigMap": "V1ConfigMap",
    "Service": "V1Service",
    "StatefulSet": "V1StatefulSet",
    "Deployment": "V1Deployment",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "NetworkPolicy": "V1NetworkPolicy",
}


def _documents() -> list[dict]:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / res).read_text()) if d)
    return docs


def test_every_manifest_round_trips_through_the_openapi_models():
    api = kubernetes.client.ApiClient()
    docs = _documents()
    assert sorted({d["kind"] for d in docs}) == sorted(MODELS)
    for doc in docs:
        model = api.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")
        back = api.sanitize_for_serialization(model)
        assert back == doc, f"{doc['kind']}/{doc['metadata']['name']}: fields not in the schema or mistyped"
        assert doc["metadata"].get("namespace", "fitserve") == "fitserve"


def test_a_typo_is_caught_by_the_round_trip():
    api = kubernetes.client.ApiClient()
    doc = next(d for d in _documents() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = bad["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    assert api.sanitize_for_serialization(api.deserialize(json.dumps(bad), "V1Deployment", "application/json")) != bad
    missing = json.loads(json.dumps(doc))
    del missing["spec"]["selector"]
    with pytest.raises(ValueError, match="selector"):
        api.deserialize(json.dumps(missing), "V1Deployment", "application/json")


def _by(kind: str, name: str) -> dict:
    return next(d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_workloads_have_probes_requests_and_secrets_that_exist():
    secret = _by("Secret", "fitserve-tokens")
    config = _by("ConfigMap", "fitserve-config")
    for kind, name in (
        ("Deployment", "fitserve-api"),
        ("Deployment", "fitserve-worker"),
        ("StatefulSet", "fitserve-redis"),
    ):
        w = _by(kind, name)
        tpl = w["spec"]["template"]
        assert w["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
        for c in tpl["spec"]["containers"]:
            assert "livenessProbe" in c and ("readinessProbe" in c or "startupProbe" in c), f"{name}: probes"
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "fitserve-tokens" and ref["key"] in secret["stringData"]
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] == "fitserve-config"
    for svc in (d for d in _documents() if d["kind"] == "Service"):
        owners = [
            d
            for d in _documents()
            if d["kind"] in ("Deployment", "StatefulSet")
            and svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(owners) == 1, svc["metadata"]["name"]
    redis = _by("StatefulSet", "fitserve-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert config["data"]["FITSERVE_PARSL_SITE"] == "/etc/fitserve/site.yaml"


def test_network_policy_admits_only_the_api_from_outside():
    pols = {d["metadata"]["name"]: d["spec"] for d in _documents() if d["kind"] == "NetworkPolicy"}
    assert pols["fitserve-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert pols["fitserve-api-ingress"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fitserve-api"}
    redis_from = [
        f["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for f in pols["fitserve-redis-ingress"]["ingress"][0]["from"]
    ]
    assert sorted(redis_from) == ["fitserve-api", "fitserve-worker"]
    # every other policy restricts its sources to pods of this namespace
    for name, spec in pols.items():
        if name not in ("fitserve-default-deny", "fitserve-api-ingress"):
            assert all(
                "podSelector" in f and "namespaceSelector" not in f for rule in spec["ingress"] for f in rule["from"]
            )


def test_the_workers_site_file_builds_a_kubernetes_provider(kubeconfig, tmp_path, monkeypatch):
    from fitserve.executors.parsl import build_config

    monkeypatch.setenv("POD_IP", "10.1.2.3")
    site = tmp_path / "site.yaml"
    site.write_text(_by("ConfigMap", "fitserve-config")["data"]["site.yaml"])
    config, capacity = build_config(workers=1, run_dir=tmp_path, site=site)
    htex = config.executors[0]
    assert type(htex.provider).__name__ == "KubernetesProvider" and htex.address == "10.1.2.3"
    assert htex.provider.service_account_name == "fitserve-pool" and capacity == 16
    worker = _by("Deployment", "fitserve-worker")
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "fitserve-worker"
    role = _by("Role", "fitserve-worker-pods")
    assert {"create", "delete", "list"} <= set(role["rules"][0]["verbs"])


def test_containerfile_and_apptainer_definition():
    from dockerfile_parse import DockerfileParser

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    with open(CONTAINERS / "Containerfile", "rb") as f:
        df = DockerfileParser(fileobj=f, env_replace=False)
        structure, parents = df.structure, df.parent_images
    args = {
        i["value"].split("=")[0]: i["value"].split("=", 1)[1]
        for i in structure
        if i["instruction"] == "ARG" and "=" in i["value"]
    }
    assert set(args["EXTRAS"].split(",")) <= extras and "cuda" in extras
    py = args["PYTHON"]
    assert all("python:${PYTHON}" in b or py in b for b in parents)
    assert re.match(r">=3\.(\d+)", pyproject["project"]["requires-python"]) and py >= "3.11"
    for ins in structure:
        if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
            for src in ins["value"].split()[:-1]:
                assert (REPO / src).exists(), f"Containerfile COPY {src}: not in the build context"
    assert any(i["instruction"] == "USER" and i["value"] != "0" for i in structure)

    text = (CONTAINERS / "fitserve-worker.def").read_text()
    header = dict(line.split(":", 1) for line in text.splitlines() if re.match(r"^(Bootstrap|From):", line))
    assert header["Bootstrap"].strip() == "docker" and f"python:{py}" in header["From"]
    sections = re.findall(r"(?m)^%(\w+)", text)
    assert set(sections) <= {
        "arguments",
        "files",
        "post",
        "environment",
        "test",
        "labels",
        "help",
        "runscript",
        "setup",
    }
    files = text.split("%files", 1)[1].split("\n%", 1)[0]
    for line in filter(None, (x.strip() for x in files.splitlines())):
        assert (REPO / line.split()[0]).exists(), f"%files {line}: not in the repository"
    assert "{{ EXTRAS }}" in text and re.search(r"(?m)^\s+EXTRAS=([\w,]+)$", text).group(1) in extras
