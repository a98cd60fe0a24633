"""deploy/kubernetes: every object valid against the Kubernetes schemas (offline, strict), and
the manifests agree with the image (port, user, volume, probes) and with each other."""

from __future__ import annotations

import copy
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from deploy.container import DATA_DIR, GPU_NAME, NAME, PORT, USER_ID
from deploy.manifests import KUBERNETES, OVERLAYS, VERSIONS, load_yaml, pod_spec, render, validate


def objects(overlay: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(KUBERNETES / overlay)}


def workloads(overlay: str) -> list[dict]:
    return [o for o in objects(overlay).values() if o["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay, version):
    rendered = render(KUBERNETES / overlay)
    assert len(rendered) >= 8
    for obj in rendered:
        validate(obj, version)


def test_the_secret_example_is_valid():
    (secret,) = load_yaml(KUBERNETES / "base" / "secret.example.yaml")
    validate(secret, VERSIONS[-1])
    referenced = {
        source["secretRef"]["name"]
        for workload in workloads("base")
        for source in pod_spec(workload)["containers"][0]["envFrom"]
        if "secretRef" in source
    }
    assert referenced == {secret["metadata"]["name"]}


def test_every_manifest_file_is_used():
    used = set()
    for overlay in OVERLAYS:
        config = yaml.safe_load((KUBERNETES / overlay / "kustomization.yaml").read_text())
        used |= {(KUBERNETES / overlay / r).resolve() for r in config.get("resources", [])}
        used |= {(KUBERNETES / overlay / p["path"]).resolve() for p in config.get("patches", [])
                 if "path" in p}  # fmt: skip
    files = {p.resolve() for p in KUBERNETES.rglob("*.yaml")}
    unused = {p for p in files - used if p.name != "kustomization.yaml"}
    assert {p.name for p in unused} == {"secret.example.yaml"}


def _invalid(deployment: dict, mutation: str) -> dict:
    broken = copy.deepcopy(deployment)
    container = pod_spec(broken)["containers"][0]
    if mutation == "replicas-not-a-number":
        broken["spec"]["replicas"] = "two"
    elif mutation == "misplaced-field":  # belongs in securityContext
        container["readOnlyRootFilesystem"] = True
    elif mutation == "probe-without-port":
        del container["livenessProbe"]["httpGet"]["port"]
    elif mutation == "bad-quantity":
        container["resources"]["limits"]["memory"] = ["3Gi"]
    return broken


@pytest.mark.parametrize(
    "mutation", ["replicas-not-a-number", "misplaced-field", "probe-without-port", "bad-quantity"]
)
def test_an_invalid_manifest_is_refused(mutation):
    deployment = objects("base")[("Deployment", "lesionseg")]
    validate(deployment, VERSIONS[-1])
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(_invalid(deployment, mutation), VERSIONS[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_the_image_as_it_is_built(overlay):
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert container["image"] == f"{GPU_NAME if overlay == 'gpu' else NAME}:latest"
        assert container["ports"] == [{"name": "http", "containerPort": PORT}]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == USER_ID
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert [m["mountPath"] for m in container["volumeMounts"]] == [DATA_DIR]
        probes = {k: container[k]["httpGet"]["path"] for k in container if k.endswith("Probe")}
        assert probes == {
            "startupProbe": "/readyz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/livez",
        }
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
        assert spec["terminationGracePeriodSeconds"] >= 30
        sources = {next(iter(s)) for s in container["envFrom"]}
        assert sources == {"configMapRef", "secretRef"}


def test_api_scales_and_jobs_keep_one_writer():
    base = objects("base")
    deployment = base[("Deployment", "lesionseg")]
    hpa = base[("HorizontalPodAutoscaler", "lesionseg")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert "emptyDir" in pod_spec(deployment)["volumes"][0]
    jobs = base[("StatefulSet", "lesionseg-jobs")]
    assert jobs["spec"]["replicas"] == 1
    (claim,) = jobs["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == pod_spec(jobs)["containers"][0]["volumeMounts"][0]["name"]
    for service_name, workload in (("lesionseg", deployment), ("lesionseg-jobs", jobs)):
        selector = base[("Service", service_name)]["spec"]["selector"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert (
            selector.items() <= labels.items()
            and selector == workload["spec"]["selector"]["matchLabels"]
        )
    routes = {
        p["path"]: p["backend"]["service"]["name"]
        for p in base[("Ingress", "lesionseg")]["spec"]["rules"][0]["http"]["paths"]
    }
    assert routes == {"/jobs": "lesionseg-jobs", "/": "lesionseg"}


def test_gpu_overlay_asks_for_a_gpu_node():
    for workload in workloads("gpu"):
        spec = pod_spec(workload)
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["LESIONSEG_DEVICE"] == "cuda"
    for workload in workloads("base"):
        assert "nodeSelector" not in pod_spec(workload)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_is_what_kubectl_kustomize_builds(overlay):
    built = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    expected = sorted((o for o in yaml.safe_load_all(built) if o), key=key)
    assert sorted(render(KUBERNETES / overlay), key=key) == expected


def test_user_id_is_the_one_bentoml_images_run_as():
    from bentoml._internal.container.generate import BENTO_UID_GID

    assert USER_ID == BENTO_UID_GID


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_ingress_controller_and_the_scraper(overlay):
    policies = [o for o in objects(overlay).values() if o["kind"] == "NetworkPolicy"]
    rules = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    assert rules, "no ingress rule: the pods would take no traffic"
    namespaces = set()
    for rule in rules:
        assert rule.get("from"), f"an ingress rule without `from` admits every pod: {rule}"
        for peer in rule["from"]:
            # An empty selector ({}) selects everything: every peer must name what it admits.
            assert all(selector for selector in peer.values()), peer
            namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    assert namespaces == {"ingress-nginx", "monitoring"}
    pods = {
        tuple(sorted(w["spec"]["template"]["metadata"]["labels"].items()))
        for w in workloads(overlay)
    }
    for labels in pods:  # every pod is under a policy that limits its ingress
        assert any(
            "Ingress" in p["spec"]["policyTypes"]
            and p["spec"]["podSelector"]["matchLabels"].items() <= dict(labels).items()
            for p in policies
        ), labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_need_the_key_secret_and_log_json(overlay):
    """Closed by default: the pods bind 0.0.0.0, so without API keys the service would refuse to
    start; the Secret that holds them is required. JSON logs, as in the image."""
    settings = objects(overlay)[("ConfigMap", "lesionseg-settings")]["data"]
    assert settings["LESIONSEG_LOG_FORMAT"] == "json"
    assert "LESIONSEG_ALLOW_ANONYMOUS" not in settings  # the opt-out is a comment only
    for workload in workloads(overlay):
        (secret,) = [s["secretRef"] for s in pod_spec(workload)["containers"][0]["envFrom"]
                     if "secretRef" in s]  # fmt: skip
        assert not secret.get("optional", False), workload["metadata"]["name"]
    bentofile = yaml.safe_load((KUBERNETES.parents[1] / "bentofile.yaml").read_text())
    image_env = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert image_env["LESIONSEG_LOG_FORMAT"] == "json"
