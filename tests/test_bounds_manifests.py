"""The volume sizes of deploy/kubernetes/ agree with the resource bounds of the settings the
pods run with (the settings' defaults, with the ConfigMap's values over them): the API pod's
emptyDir holds its uploads in flight, the jobs pod's claim its queue, its uploads in flight
and the results kept over the retention; in scale-out the shared job volume holds the same
but the uploads in flight of every API pod (once each: each spools its own in its emptyDir).
The arithmetic is docs/deployment.md's ("Sizes of the volumes") and the manifests' comments."""

from __future__ import annotations

import os
import re

import pytest

from deploy.manifests import KUBERNETES, OVERLAYS, pod_spec, render
from lesionseg.settings import Settings
from service.bounds import HEADROOM_BYTES, JOBS_PER_DAY, RESULT_BYTES, volume_sizes

GIB = 2**30
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
DOCS = KUBERNETES.parents[1] / "docs" / "deployment.md"


def quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity with a binary suffix ("3Gi") or none."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text)).groups()
    return int(number) * UNITS.get(unit, 1)


def pod_settings(objects: dict, monkeypatch) -> Settings:
    """The settings of the pods: the ConfigMap's LESIONSEG_* values over the defaults (not
    this process's environment)."""
    for name in [n for n in os.environ if n.startswith("LESIONSEG_")]:
        monkeypatch.delenv(name)
    data = objects[("ConfigMap", "lesionseg-settings")]["data"]
    return Settings(**{k.removeprefix("LESIONSEG_").lower(): v for k, v in data.items()})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volume_sizes_follow_the_bounds(overlay, monkeypatch):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(KUBERNETES / overlay)}
    sizes = volume_sizes(pod_settings(objects, monkeypatch))

    (volume,) = [v for v in pod_spec(objects[("Deployment", "lesionseg")])["volumes"]
                 if "emptyDir" in v]  # fmt: skip
    empty_dir = quantity(volume["emptyDir"]["sizeLimit"])
    if overlay == "scale-out":
        claim = objects[("PersistentVolumeClaim", "lesionseg-jobs")]
        # volume_sizes' jobs volume has one pod's uploads in flight twice; here every API pod
        # copies its own in once.
        inflight = int(pod_settings(objects, monkeypatch).max_inflight_bytes)
        api_pods = objects[("HorizontalPodAutoscaler", "lesionseg")]["spec"]["maxReplicas"]
        sizes["jobs"] += api_pods * inflight - 2 * inflight
    else:
        (claim,) = objects[("StatefulSet", "lesionseg-jobs")]["spec"]["volumeClaimTemplates"]
    storage = quantity(claim["spec"]["resources"]["requests"]["storage"])
    # Large enough, and not so large that the numbers no longer say where it comes from.
    assert sizes["api"] <= empty_dir <= sizes["api"] + GIB, (empty_dir, sizes)
    assert sizes["jobs"] <= storage <= 1.25 * sizes["jobs"], (storage, sizes)


def test_the_sizes_of_the_default_settings_are_the_documented_ones(monkeypatch):
    for name in [n for n in os.environ if n.startswith("LESIONSEG_")]:
        monkeypatch.delenv(name)
    sizes = volume_sizes(Settings())
    # 2 x 1 GiB in flight + 1 GiB; 100 x 256 MiB + 2 x 1 GiB + 200 x 3 days x 16 MiB + 1 GiB
    assert sizes["api"] == 3 * GIB
    assert sizes["jobs"] == 25 * GIB + 2 * GIB + 600 * RESULT_BYTES + HEADROOM_BYTES
    assert (JOBS_PER_DAY, RESULT_BYTES, HEADROOM_BYTES) == (200, 16 * 2**20, GIB)
    text = DOCS.read_text()
    shared = sizes["jobs"] + 8 * GIB  # scale-out: 10 API pods' 1 GiB in flight, not 2 x 1 GiB
    for size in ("3 GiB", f"{sizes['jobs'] / GIB:.1f} GiB", f"{shared / GIB:.1f} GiB"):
        assert size in text, size
