"""One chain of time limits (service/deadlines.py): the rendered manifests and the settings of
the pods (defaults and the ConfigMap) agree, link by link, and the doctor's findings say where
a link is shorter than the one it must cover."""

from __future__ import annotations

import os

import pytest

from deploy.manifests import KUBERNETES, OVERLAYS, pod_spec, render
from lesionseg.settings import Settings
from service.deadlines import (
    NGINX,
    PRESTOP_S,
    PROBES,
    chain,
    findings,
    nginx_size,
    parse_nginx_size,
    shipped_chain,
)
from service.drain import Drain, drain_timeout_s
from service.launcher import REPO_ROOT
from service.limits import max_request_bytes, traffic_timeout_s

MIB = 2**20


@pytest.fixture
def clean_environment(monkeypatch):
    """No LESIONSEG_* variable of the test session (tests/server_limits.py sets some)."""
    for name in [n for n in os.environ if n.upper().startswith("LESIONSEG_")]:
        monkeypatch.delenv(name)


def pod_settings(overlay: str) -> Settings:
    """The settings a pod of ``overlay`` runs with: the defaults and the ConfigMap's values."""
    rendered = render(KUBERNETES / overlay)
    (configmap,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    fields = {
        name.removeprefix("LESIONSEG_").lower(): value for name, value in configmap["data"].items()
    }
    return Settings(**fields)


def rendered(overlay: str) -> tuple[list[dict], dict]:
    objects = render(KUBERNETES / overlay)
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")], ingress


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_carry_the_chain_of_the_pods_settings(overlay, clean_environment):
    need = chain(pod_settings(overlay))
    assert need == shipped_chain()  # the ConfigMap leaves the chain at its defaults
    workloads, ingress = rendered(overlay)
    kinds = {w["kind"] for w in workloads}  # scale-out: Deployments only (API and workers)
    assert "Deployment" in kinds and kinds <= {"Deployment", "StatefulSet"}
    for workload in workloads:
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert spec["terminationGracePeriodSeconds"] == need.grace_s, workload["metadata"]
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_S)]
        for probe, timing in PROBES.items():
            assert {k: container[probe].get(k) for k in timing} == timing, (probe, workload)
            assert container[probe].get("timeoutSeconds", 1) < container[probe]["periodSeconds"]
        # the grace covers the preStop sleep, the runner's drain and the API's own drain
        assert spec["terminationGracePeriodSeconds"] > PRESTOP_S + need.drain_timeout_s
        assert need.drain_timeout_s >= need.request_timeout_s
    annotations = ingress["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith(NGINX)} == need.annotations()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_200_mib_series_and_a_120_s_request_pass_the_ingress_and_the_service(
    overlay, clean_environment
):
    settings = pod_settings(overlay)
    _, ingress = rendered(overlay)
    annotations = ingress["metadata"]["annotations"]
    # 200 MiB of DICOM files in one multipart form (boundaries and part headers: ~200 bytes
    # per file of 512 KiB, the size of one CT slice)
    files = 200 * MIB
    body = files + 400 * 200
    assert files <= settings.max_upload_bytes  # the service's per-request file limit
    assert body <= max_request_bytes(settings)  # BodyLimit's 413
    assert body <= parse_nginx_size(annotations[f"{NGINX}proxy-body-size"])
    # a request answered after 120 s: the deadline lets it run, BentoML and nginx wait longer
    answered_after = 120
    assert settings.request_timeout_s >= answered_after
    assert traffic_timeout_s(settings) > settings.request_timeout_s
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"{NGINX}{name}"]) > traffic_timeout_s(settings) >= answered_after


def test_nginx_sizes():
    assert parse_nginx_size("257m") == 257 * MIB
    assert parse_nginx_size("1g") == 2**30 and parse_nginx_size("512K") == 2**19
    assert parse_nginx_size("1024") == 1024
    assert nginx_size(256 * MIB + MIB) == "257m" and nginx_size(256 * MIB + 1) == "257m"
    with pytest.raises(ValueError, match="not an nginx size"):
        parse_nginx_size("1.5m")


def test_the_chain_follows_the_deadline_and_the_upload_limit(clean_environment):
    settings = Settings(request_timeout_s=300, max_upload_bytes="1GiB")
    need = chain(settings)
    assert need.traffic_timeout_s == 330 and need.ingress_timeout_s == 340
    assert need.drain_timeout_s == 305 and need.grace_s == PRESTOP_S + 305 + 10
    assert parse_nginx_size(need.annotations()[f"{NGINX}proxy-body-size"]) >= 2**30 + MIB
    # an explicit drain below the deadline: the grace still covers the API's own drain
    assert chain(Settings(drain_timeout_s=30)).grace_s == PRESTOP_S + 120 + 10


def test_the_runner_drain_defaults_to_the_deadline(clean_environment):
    assert drain_timeout_s(Settings(request_timeout_s=200)) == 205
    assert drain_timeout_s(Settings(request_timeout_s=200, drain_timeout_s=250)) == 250
    assert Drain.from_settings(Settings(request_timeout_s=60)).timeout_s == 65


def levels(settings: Settings, host: str | None = None) -> dict[str, str]:
    return {f.text: f.level for f in findings(settings, host)}


def test_findings_of_the_defaults_are_all_ok(clean_environment):
    found = findings(Settings(), None)
    assert {f.level for f in found} == {"ok"} and {f.topic for f in found} == {"time limits"}
    assert any("125 s" in f.text and "120 s" in f.text for f in found)  # drain vs deadline


def test_a_drain_below_the_deadline_is_unsafe(clean_environment):
    found = levels(Settings(drain_timeout_s=25))
    (unsafe,) = [text for text, level in found.items() if level == "unsafe"]
    assert "LESIONSEG_DRAIN_TIMEOUT_S=25" in unsafe and "120" in unsafe


def test_a_longer_deadline_than_the_manifests_give_is_a_warning(clean_environment):
    found = levels(Settings(request_timeout_s=600))
    warned = [text for text, level in found.items() if level == "warn"]
    assert len(warned) == 2
    assert any("terminationGracePeriodSeconds >= 620" in t for t in warned)
    assert any("proxy-read/send-timeout >= 640 s" in t for t in warned)
    assert "unsafe" not in found.values()
    # on loopback there is no pod or ingress to match
    assert set(levels(Settings(request_timeout_s=600), "127.0.0.1").values()) == {"ok"}


def test_the_docs_show_what_python_m_service_deadlines_prints(clean_environment, capsys):
    from service.deadlines import main

    main()
    printed = capsys.readouterr().out
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    section = docs.split("### Time limits", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    assert block == printed
