"""deploy/kubernetes/scale-out: the job table in PostgreSQL, workers that KEDA scales on the
queue's depth, one ReadWriteMany job volume; and the KEDA objects checked against their CRDs'
schemas (deploy/schemas/), strictly."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import re
import sqlite3

import jsonschema
import pytest
import yaml

from deploy.container import DATA_ENV
from deploy.manifests import (
    CUSTOM_KINDS,
    KUBERNETES,
    VERSIONS,
    _custom_schema,
    load_yaml,
    pod_spec,
    validate,
)
from lesionseg.pacs.job_db import DB_FILE
from lesionseg.pacs.job_store import JobStore
from lesionseg.settings import Settings
from service.bounds import HEADROOM_BYTES
from tests.test_bounds_manifests import quantity
from tests.test_kubernetes import env, objects, workloads

SCALE_OUT = "scale-out"
DATABASE_KEY = "LESIONSEG_JOBS_DATABASE_URL"


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    return objects(SCALE_OUT)


def scaled_object(rendered: dict) -> dict:
    return rendered[("ScaledObject", "lesionseg-worker")]


def test_no_jobs_pod_and_jobs_go_to_the_api(rendered):
    kinds = {kind for kind, _ in rendered}
    assert "StatefulSet" not in kinds
    assert ("Service", "lesionseg-jobs") not in rendered
    assert [(w["kind"], w["metadata"]["name"]) for w in workloads(SCALE_OUT)] == [
        ("Deployment", "lesionseg"),
        ("Deployment", "lesionseg-worker"),
    ]
    (rule,) = rendered[("Ingress", "lesionseg")]["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {"/": "lesionseg"}  # /jobs included: a Prefix path
    assert ("Service", "lesionseg") in rendered
    # what base/ has besides the jobs pod is all here
    base = objects("base")
    gone = {("StatefulSet", "lesionseg-jobs"), ("Service", "lesionseg-jobs")}
    assert set(base) - gone <= set(rendered)


def test_the_api_accepts_jobs_into_the_database_and_runs_none(rendered, monkeypatch):
    api = rendered[("Deployment", "lesionseg")]
    worker = rendered[("Deployment", "lesionseg-worker")]
    secret_name = load_yaml(KUBERNETES / "base" / "secret.example.yaml")[0]["metadata"]["name"]
    from_secret = {"valueFrom": {"secretKeyRef": {"name": secret_name, "key": DATABASE_KEY}}}
    assert env(api)[DATABASE_KEY] == from_secret  # required: no `optional`
    assert env(worker)[DATABASE_KEY] == from_secret
    assert env(api)["LESIONSEG_JOBS_WORKER"] == {"value": "false"}
    assert "LESIONSEG_JOBS_WORKER" not in env(worker)
    # what the settings make of them (a URL of the Secret's form in place of the reference)
    for name in [n for n in os.environ if n.startswith("LESIONSEG_")]:
        monkeypatch.delenv(name)
    url = "postgresql://lesionseg:secret@postgres.example:5432/lesionseg"
    values = {name: entry.get("value", url) for name, entry in env(api).items()}
    settings = Settings(**{k.removeprefix("LESIONSEG_").lower(): v for k, v in values.items()})
    assert settings.jobs_worker is False
    assert settings.jobs_database_url.get_secret_value() == url
    # the Secret's example names the key, and says it is for scale-out
    example = (KUBERNETES / "base" / "secret.example.yaml").read_text()
    assert re.search(rf"#\s*{DATABASE_KEY}: postgresql://", example)


def test_the_worker_runs_service_worker_in_the_bento(rendered):
    from bentoml._internal.container.generate import BENTO_PATH

    worker = rendered[("Deployment", "lesionseg-worker")]
    (container,) = pod_spec(worker)["containers"]
    # on every interface (the probes come from the kubelet), on the port the probes call
    (http,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert container["command"] == [
        "python", "-m", "service.worker", "--host", "0.0.0.0", "--port", str(http)
    ]  # fmt: skip
    assert importlib.util.find_spec("service.worker") is not None
    assert container["workingDir"] == f"{BENTO_PATH}/src"  # where the bento keeps service/
    assert "replicas" not in worker["spec"]  # the ScaledObject's to set
    # sized, secured and probed like the jobs pod of base/
    spec, jobs_spec = pod_spec(worker), pod_spec(objects("base")[("StatefulSet", "lesionseg-jobs")])
    (jobs,) = jobs_spec["containers"]
    for key in ("resources", "securityContext", "startupProbe", "readinessProbe", "livenessProbe"):
        assert container[key] == jobs[key], key
    context = {k: v for k, v in spec["securityContext"].items() if k != "fsGroupChangePolicy"}
    assert context == jobs_spec["securityContext"]
    assert spec["terminationGracePeriodSeconds"] == jobs_spec["terminationGracePeriodSeconds"]
    (data,) = [v for v in spec["volumes"] if "emptyDir" in v]
    assert quantity(data["emptyDir"]["sizeLimit"]) >= HEADROOM_BYTES


def test_workers_and_api_mount_one_shared_claim_at_the_jobs_dir(rendered):
    claim = rendered[("PersistentVolumeClaim", "lesionseg-jobs")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in claim["spec"]  # the site's (a commented line says so)
    jobs_dir = rendered[("ConfigMap", "lesionseg-settings")]["data"]["LESIONSEG_JOBS_DIR"]
    assert jobs_dir == DATA_ENV["LESIONSEG_JOBS_DIR"]  # the image's own value
    mounted = []
    for workload in workloads(SCALE_OUT):
        spec = pod_spec(workload)
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        (container,) = spec["containers"]
        mounted += [
            (volumes[m["name"]], m["mountPath"], m.get("readOnly", False))
            for m in container["volumeMounts"]
            if m["name"] in volumes
        ]
    assert mounted == [(claim["metadata"]["name"], jobs_dir, False)] * 2


def run_query(query: str, database: str, tmp_path, url: str | None) -> int:
    """``query``'s one number, on the job table of the store in ``tmp_path`` as KEDA would run
    it: straight on the database, not through the store."""
    if database == "sqlite":
        with contextlib.closing(sqlite3.connect(tmp_path / DB_FILE)) as db:
            return db.execute(query).fetchone()[0]
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute(query).fetchone()[0]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_scaled_object_scales_the_workers_on_queued_and_running_jobs(
    rendered, tmp_path, database, request
):
    scaled = scaled_object(rendered)["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert ("Deployment", target["name"]) in rendered
    assert target["name"] == "lesionseg-worker"
    assert scaled["minReplicaCount"] >= 1  # no job waits for a cold start
    assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]
    # KEDA makes the HPA; another one of the workers would fight it
    assert not any(
        o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == target["name"]
        for o in rendered.values()
    )
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    assert float(trigger["metadata"]["targetQueryValue"]) == 1  # one job per worker
    # The query, run on a real job store's table (PostgreSQL's, and sqlite's: the same table
    # and states), counts the jobs queued or running, not those done or failed.
    url = request.getfixturevalue("postgres").database() if database == "postgresql" else None
    store = JobStore(tmp_path, database_url=url)
    try:
        ids = [store.submit([io.BytesIO(b"x")]).id for _ in range(6)]
        claimed = [store.claim_next(), store.claim_next(), store.claim_next()]
        store.complete(claimed[0].id, b"seg", {})
        store.fail(claimed[1].id, "broken")
        assert len(set(ids)) == 6  # 3 queued, 1 running, 1 done, 1 failed
    finally:
        store.close()
    assert run_query(trigger["metadata"]["query"], database, tmp_path, url) == 4


def test_keda_reads_the_database_url_the_pods_read(rendered):
    trigger = scaled_object(rendered)["spec"]["triggers"][0]
    auth = rendered[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    (reference,) = auth["spec"]["secretTargetRef"]
    api_reference = env(rendered[("Deployment", "lesionseg")])[DATABASE_KEY]
    assert reference == {"parameter": "connection", **api_reference["valueFrom"]["secretKeyRef"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_keda_objects_are_valid_against_their_crds(rendered, version):
    kinds = [o for o in rendered.values() if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]
    assert sorted(o["kind"] for o in kinds) == ["ScaledObject", "TriggerAuthentication"]
    for obj in kinds:
        validate(obj, version)


def test_the_vendored_schemas_say_where_they_come_from():
    for path in CUSTOM_KINDS.values():
        header = path.read_text().split("\n\n", 1)[0]
        assert re.search(r"^# source: https://github.com/kedacore/keda/blob/[0-9a-f]{40}/", header,
                         re.M), path  # fmt: skip
        assert re.search(r"^# commit: [0-9a-f]{40}", header, re.M), path
        assert re.search(r"^# licence: Apache-2.0", header, re.M), path


def _broken(obj: dict, mutation: str) -> dict:
    broken = copy.deepcopy(obj)
    spec = broken["spec"]
    if mutation == "no-scale-target":
        del spec["scaleTargetRef"]
    elif mutation == "unknown-field":
        spec["minReplicas"] = 1  # the HPA's word; KEDA's is minReplicaCount
    elif mutation == "unknown-trigger-field":
        spec["triggers"][0]["authenticationReference"] = spec["triggers"][0]["authenticationRef"]
    elif mutation == "number-not-string":  # trigger metadata are strings
        spec["triggers"][0]["metadata"]["targetQueryValue"] = 1
    elif mutation == "no-triggers":
        spec["triggers"] = []
    elif mutation == "min-above-max":  # the CRD's CEL rule
        spec["minReplicaCount"], spec["maxReplicaCount"] = 5, 2
    elif mutation == "negative-min":
        spec["minReplicaCount"] = -1
    elif mutation == "unknown-metadata-field":
        broken["metadata"]["label"] = {"a": "b"}
    elif mutation == "auth-unknown-field":
        spec["secretTargetRef"][0]["secret"] = spec["secretTargetRef"][0].pop("name")
    elif mutation == "auth-not-a-list":
        spec["secretTargetRef"] = spec["secretTargetRef"][0]
    return broken


@pytest.mark.parametrize(
    ("kind", "mutation"),
    [
        ("ScaledObject", "no-scale-target"),
        ("ScaledObject", "unknown-field"),
        ("ScaledObject", "unknown-trigger-field"),
        ("ScaledObject", "number-not-string"),
        ("ScaledObject", "no-triggers"),
        ("ScaledObject", "min-above-max"),
        ("ScaledObject", "negative-min"),
        ("ScaledObject", "unknown-metadata-field"),
        ("TriggerAuthentication", "auth-unknown-field"),
        ("TriggerAuthentication", "auth-not-a-list"),
    ],
)
def test_an_invalid_keda_object_is_refused(rendered, kind, mutation):
    (obj,) = [o for o in rendered.values() if o["kind"] == kind]
    validate(obj, VERSIONS[-1])
    with pytest.raises(jsonschema.ValidationError):
        validate(_broken(obj, mutation), VERSIONS[-1])


def test_a_crd_rule_render_cannot_evaluate_is_refused(tmp_path, monkeypatch):
    schema = yaml.safe_load(CUSTOM_KINDS[("keda.sh/v1alpha1", "ScaledObject")].read_text())
    schema["properties"]["spec"]["x-kubernetes-validations"].append(
        {"rule": "self.pollingInterval < 60", "message": "new"}
    )
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(schema))
    monkeypatch.setitem(CUSTOM_KINDS, ("example.com/v1", "Example"), path)
    with pytest.raises(NotImplementedError, match="pollingInterval"):
        _custom_schema("example.com/v1", "Example")
