"""Every `curl` line of the README and the docs against one real `bentoml serve` with the
settings a user gets: the openvino backend and the embedding cache on. The environment adds only
the test session's store, job directory and generous admission limits (tests/conftest.py); the
API-key line needs a server with keys and runs in tests/service/test_auth_serve.py."""

from __future__ import annotations

import gzip
import json
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import pydicom
import pytest
from pycocotools import mask as mask_utils

from lesionseg.datasets.examples import write_examples
from service.launcher import running_server
from tests.docs_pages import REPO, curl_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = REPO / "data" / "examples"
STATUS = "\n%{http_code} %{content_type}"  # curl -w: appended to what the command prints
# What each route answers, by the route's path.
CONTENT_TYPES = {
    "/segment": "application/json",
    "/segment/boxes": "application/json",
    "/segment/propagate": "application/json",
    "/segment/overlay": "image/png",
    "/segment/dicom-seg": "application/dicom",
    "/segment/dicom-sr": "application/zip",
    "/segment/nifti": "application/gzip",
}
NEEDS_KEYS = "$KEY"  # the security page's line: tests/service/test_auth_serve.py runs it


@pytest.fixture(scope="module")
def server(model_store, lits, tmp_path_factory):
    """`bentoml serve` as `make serve` runs it, on a free loopback port, no settings added."""
    if not (EXAMPLES / "lits117.nii.gz").exists():  # `make data` writes the examples;
        write_examples(lits, EXAMPLES, 110)  # a bare pytest run needs them too
    with running_server({}, tmp_path_factory.mktemp("docs") / "serve.log") as url:
        yield url


def local_lines() -> list[tuple[str, str]]:
    return [(page, line) for page, line in curl_lines() if NEEDS_KEYS not in line]


def run_curl(command: str, url: str, cwd: Path) -> tuple[bytes, int, str]:
    """Run a docs line against ``url``: (what it printed, HTTP status, content type)."""
    command = command.replace("http://localhost:3000", url).replace("@data/", f"@{REPO}/data/")
    argv = shlex.split(command)
    argv[1:1] = ["-S", "--max-time", "300", "-w", STATUS]
    out = subprocess.run(argv, cwd=cwd, capture_output=True, check=True).stdout
    body, _, status = out.rpartition(b"\n")
    code, _, content_type = status.decode().partition(" ")
    return body, int(code), content_type.split(";")[0]


@pytest.mark.timeout(900)
def test_every_docs_curl_line_answers_with_the_default_settings(server, tmp_path):
    lines = local_lines()
    assert len(lines) >= 10, lines
    assert len(curl_lines()) - len(lines) == 1, "one line with $KEY, run with keys elsewhere"
    for page, command in lines:
        route = re.search(r"http://localhost:3000(/\S*)", command).group(1)
        body, code, content_type = run_curl(command, server, tmp_path)
        assert code == 200, (page, command, body[:500])
        assert content_type == CONTENT_TYPES[route], (page, command, content_type)
        if written := re.search(r"-o (\S+)", command):
            check_written_file(tmp_path / written.group(1))
        else:
            check_json(json.loads(body), dicom=".dcm" in command)
    assert cache_hits(server) > 0, "the embedding cache is on by default and the lines repeat"


def test_the_readme_answer_is_the_served_one(server, tmp_path):
    """The README's abbreviated answer: its first lesion and the bundle's values are served."""
    readme = (REPO / "README.md").read_text()
    ((_, command),) = [x for x in curl_lines() if x[0] == "README.md"]
    body, code, _ = run_curl(command, server, tmp_path)
    assert code == 200
    answer = json.loads(body)
    shown = json.loads(re.search(r'"box": (\[[^]]+\])', readme).group(1))
    first = answer["lesions"][0]
    assert first["box"] == pytest.approx(shown, abs=0.05), (first, shown)
    assert f'"label": "{first["label"]}"' in readme
    area = int(re.search(r'"area_px": (\d+)', readme).group(1))  # SAM's precision: bf16 or fp32
    assert first["area_px"] == pytest.approx(area, rel=0.03), (first["area_px"], area)
    assert len(answer["lesions"]) == 3 and "three lesions" in readme
    bundle = answer["models"]["bundle"]
    assert f'"score_threshold": {bundle["score_threshold"]}' in readme
    assert f'"box_margin": {bundle["box_margin"]}' in readme


def check_json(body: dict, *, dicom: bool) -> None:
    """A result JSON served by the default backend: an image's lesions with decodable masks,
    or a volume's frames and 3-D lesions."""
    assert body["models"]["backend"] == "openvino", body["models"]
    if "frames" in body:
        check_volume(body)
        return
    assert (body["width"], body["height"]) == (128, 128), body
    assert body["lesions"], body
    for lesion in body["lesions"]:
        rle = {"size": lesion["mask"]["size"], "counts": lesion["mask"]["counts"].encode()}
        assert mask_utils.decode(rle).shape == (128, 128)
        # the CT example has 0.66 mm pixels; the PNG has no spacing
        assert (lesion["area_mm2"] is not None) == dicom, lesion


def check_volume(body: dict) -> None:
    """The NIfTI example (3 slices, 0.8 x 0.7 mm pixels, 2.5 mm apart) with its lesions."""
    assert body["number_of_frames"] == 3 and body["lesions_3d"], body
    ids = [x["lesion_id"] for f in body["frames"] for x in f["lesions"]]
    assert sorted(set(ids)) == [x["id"] for x in body["lesions_3d"]]
    for lesion in body["lesions_3d"]:
        area = sum(
            x["area_mm2"] for f in body["frames"] for x in f["lesions"]
            if x["lesion_id"] == lesion["id"]
        )  # fmt: skip
        assert lesion["volume_mm3"] == pytest.approx(area * 2.5, rel=1e-3)
        assert lesion["long_axis_mm"] >= lesion["short_axis_mm"] > 0


def check_written_file(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        assert pydicom.dcmread(archive.open("seg.dcm")).Modality == "SEG"
        assert pydicom.dcmread(archive.open("sr.dcm")).Modality == "SR"
    elif path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    elif path.suffix == ".dcm":
        assert pydicom.dcmread(path).Modality == "SEG"
    else:
        assert path.name.endswith(".nii.gz")
        assert nib.Nifti1Image.from_bytes(gzip.decompress(data)).shape == (128, 128, 3)


def cache_hits(url: str) -> float:
    """lesionseg_embedding_cache_hits_total over its kinds, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.findall(r"^lesionseg_embedding_cache_hits_total\{[^}]*\} (\S+)", text, re.M)
    return sum(float(v) for v in found)
