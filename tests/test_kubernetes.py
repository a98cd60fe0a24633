"""deploy/kubernetes: every object valid against the Kubernetes schemas (offline, strict), and
the manifests agree with the image (port, user, volume, probes) and with each other."""

from __future__ import annotations

import copy
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from deploy.container import DATA_DIR, DATA_ENV, GPU_NAME, NAME, PORT, USER_ID
from deploy.manifests import KUBERNETES, OVERLAYS, VERSIONS, load_yaml, pod_spec, render, validate

LISTENER_LABEL = "dicom-listener"


def objects(overlay: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(KUBERNETES / overlay)}


def workloads(overlay: str) -> list[dict]:
    return [o for o in objects(overlay).values() if o["kind"] in ("Deployment", "StatefulSet")]


def env(workload: dict) -> dict[str, dict]:
    """The container's ``env`` entries by name (each ``{"value": ...}`` or ``{"valueFrom":
    ...}``)."""
    (container,) = pod_spec(workload)["containers"]
    return {
        e["name"]: {k: v for k, v in e.items() if k != "name"} for e in container.get("env", [])
    }


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
    settings = objects(overlay)[("ConfigMap", "lesionseg-settings")]["data"]
    jobs_dir = settings.get("LESIONSEG_JOBS_DIR", DATA_ENV["LESIONSEG_JOBS_DIR"])
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert container["image"] == f"{GPU_NAME if overlay == 'gpu' else NAME}:latest"
        http, *others = container["ports"]
        assert http == {"name": "http", "containerPort": PORT}
        # the listener's port where, and only where, the pod sets it (LESIONSEG_DICOM_PORT)
        listener = env(workload).get("LESIONSEG_DICOM_PORT")
        expected = [] if listener is None else [int(listener["value"])]
        assert [p["containerPort"] for p in others if p["name"] == "dicom"] == expected
        assert [p["name"] for p in others] == ["dicom"] * len(expected)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == USER_ID
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # the image's writable directory, and the shared job volume where the pods find it
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert mounts in ([DATA_DIR], [DATA_DIR, jobs_dir]), mounts
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
    gpu = objects("gpu")
    assert gpu[("ConfigMap", "lesionseg-settings")]["data"]["LESIONSEG_DEVICE"] == "cuda"
    for workload in workloads("gpu"):
        spec = pod_spec(workload)
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        # the pod's own env is kept (the patch sets the device in the ConfigMap)
        base = objects("base")[(workload["kind"], workload["metadata"]["name"])]
        assert env(workload) == env(base)
        assert "LESIONSEG_DEVICE" not in env(workload)
    for workload in workloads("base"):
        assert "nodeSelector" not in pod_spec(workload)
    assert "LESIONSEG_DEVICE" not in objects("base")[("ConfigMap", "lesionseg-settings")]["data"]


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


def policies(overlay: str) -> list[dict]:
    return [o for o in objects(overlay).values() if o["kind"] == "NetworkPolicy"]


def selects(policy: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_ingress_controller_the_scraper_and_the_pacs(overlay):
    """HTTP (3000) from the ingress controller's and the scraper's namespaces, to every pod;
    DICOM (11112) from the PACS' marked address range, to the listener pods only; nothing
    else."""
    admitted: dict[int, set] = {}
    for policy in policies(overlay):
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"an ingress rule without `from` admits every pod: {rule}"
            ports = {p["port"] for p in rule["ports"]}
            for peer in rule["from"]:
                # An empty selector ({}) selects everything: every peer must name what it admits.
                assert all(selector for selector in peer.values()), peer
                if "ipBlock" in peer:
                    source = peer["ipBlock"]["cidr"]
                else:
                    source = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for port in ports:
                    admitted.setdefault(port, set()).add(source)
            if ports == {11112}:  # only the pods that listen
                assert policy["spec"]["podSelector"]["matchLabels"][LISTENER_LABEL] == "true"
    # 192.0.2.0/24: a documentation range (RFC 5737), which the site replaces with its PACS'
    assert admitted == {3000: {"ingress-nginx", "monitoring"}, 11112: {"192.0.2.0/24"}}
    for workload in workloads(overlay):  # every pod is under a policy that limits its ingress
        assert any(
            "Ingress" in p["spec"]["policyTypes"] and selects(p, workload)
            for p in policies(overlay)
        ), workload["metadata"]["name"]


def egress_ports(overlay: str) -> dict[str, set[int]]:
    """The ports each workload may call (every destination, for the rules here have no `to`)."""
    found = {}
    for workload in workloads(overlay):
        rules = [
            rule
            for p in policies(overlay)
            if "Egress" in p["spec"]["policyTypes"] and selects(p, workload)
            for rule in p["spec"].get("egress", [])
        ]
        assert all("to" not in rule for rule in rules), rules
        found[workload["metadata"]["name"]] = {p["port"] for r in rules for p in r["ports"]}
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_out_only_dns_the_archives_and_the_job_database(overlay):
    archives = {80, 443, 8042, 104, 11112}  # DICOMweb, and C-STORE to LESIONSEG_DICOM_DESTINATIONS
    expected = {
        "base": {"lesionseg": {53}, "lesionseg-jobs": {53} | archives},
        "scale-out": {"lesionseg": {53, 5432}, "lesionseg-worker": {53, 5432} | archives},
    }
    assert egress_ports(overlay) == expected.get(overlay, expected["base"])


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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dicom_service_selects_the_pods_that_listen_and_hold_the_store(overlay):
    """lesionseg-dicom (port 11112 -> `dicom`) reaches exactly the pods that set
    LESIONSEG_DICOM_PORT and expose it: the jobs pod of base/ (the sqlite store's), the API pods
    of scale-out/ (on the shared job volume), never the workers."""
    rendered = objects(overlay)
    service = rendered[("Service", "lesionseg-dicom")]
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("dicom", 11112, "dicom")
    selected = [
        w
        for w in workloads(overlay)
        if service["spec"]["selector"].items()
        <= w["spec"]["template"]["metadata"]["labels"].items()
    ]
    listening = [w for w in workloads(overlay) if "LESIONSEG_DICOM_PORT" in env(w)]
    assert selected == listening
    expected = {"scale-out": [("Deployment", "lesionseg")]}.get(
        overlay, [("StatefulSet", "lesionseg-jobs")]
    )
    assert [(w["kind"], w["metadata"]["name"]) for w in selected] == expected
    for workload in selected:
        (container,) = pod_spec(workload)["containers"]
        (dicom,) = [p for p in container["ports"] if p["name"] == "dicom"]
        assert int(env(workload)["LESIONSEG_DICOM_PORT"]["value"]) == dicom["containerPort"]
        # the store the listener's series become jobs of: a volume that outlives the pod
        claims = {v["name"] for v in pod_spec(workload).get("volumes", [])
                  if "persistentVolumeClaim" in v}  # fmt: skip
        claims |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert claims & {m["name"] for m in container["volumeMounts"]}, workload["metadata"]
