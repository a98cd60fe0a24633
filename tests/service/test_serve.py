"""One real `bentoml serve` process: readiness and batching (the docs' curl lines:
tests/service/test_docs_examples.py)."""

from __future__ import annotations

import csv
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from benchmarks.load import main as load_benchmark
from benchmarks.load import scrape
from lesionseg.datasets.examples import write_examples
from lesionseg.io.masks import decode_rle
from lesionseg.measure.evaluation import dice
from service.launcher import REPO_ROOT, running_server

from .conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = REPO_ROOT / "data" / "examples" / "lits117-z110.png"


@pytest.fixture(scope="module")
def server(model_store, lits, tmp_path_factory):
    """`bentoml serve` on a free loopback port, as `make serve` runs it."""
    if not (EXAMPLE.parent / "lits117.nii.gz").exists():  # `make data` writes the examples;
        write_examples(lits, EXAMPLE.parent, 110)  # a bare pytest run needs them too
    # The torch backend here; the in-process tests cover the default, openvino. No per-image
    # cache: the batching test sends its images twice and needs the runner both times (the
    # cache has its own tests, tests/service/test_cache_inprocess.py).
    env = {
        "LESIONSEG_MAX_BATCH_SIZE": "4",
        "LESIONSEG_MAX_LATENCY_MS": "120000",
        "LESIONSEG_BACKEND": "torch",
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",
    }
    with running_server(env, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def test_bad_input_over_http(server):
    response = httpx.post(f"{server}/segment", files={"image": ("x.png", b"nope", "image/png")})
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]
    assert httpx.get(f"{server}/readyz").status_code == 200


def batch_counts(url: str) -> dict[str, tuple[float, float]]:
    """(sum of batch sizes, number of batches) per batched method, from /metrics."""
    counters = scrape(url)
    return {
        m: (counters[f"batch_{m}_sum"], counters[f"batch_{m}_count"]) for m in ("detect", "embed")
    }


def test_concurrent_requests_are_batched_and_routed_back(server, lits):
    # Six images of six different sizes: a response sent to the wrong caller would show.
    crops = [(128, 128), (120, 110), (112, 128), (100, 100), (128, 96), (90, 120)]
    images = [lits.slice(102 + 4 * i).image[:h, :w] for i, (h, w) in enumerate(crops)]
    payloads = [png_bytes(im) for im in images]

    def call(data: bytes) -> dict:
        r = httpx.post(
            f"{server}/segment", files={"image": ("i.png", data, "image/png")}, timeout=300
        )
        assert r.status_code == 200, r.text
        return r.json()

    reference = [call(p) for p in payloads]  # one at a time
    before = batch_counts(server)
    with ThreadPoolExecutor(len(payloads)) as pool:
        concurrent = list(pool.map(call, payloads))
    after = batch_counts(server)

    with_lesions = sum(1 for r in reference if r["lesions"])  # images without boxes skip SAM
    assert with_lesions >= 3
    counts = {m: (after[m][0] - before[m][0], after[m][1] - before[m][1]) for m in after}
    assert counts["detect"][0] == len(payloads), counts
    assert counts["embed"][0] == with_lesions, counts
    # The encoder takes ~1 s per image here, so concurrent requests must share its batches;
    # the detector (~30 ms) may legitimately finish each request before the next arrives.
    assert counts["embed"][1] < counts["embed"][0], f"no batching of the encoder: {counts}"
    for (h, w), ref, got in zip(crops, reference, concurrent, strict=True):
        assert (got["height"], got["width"]) == (h, w)
        assert len(got["lesions"]) == len(ref["lesions"]), (ref, got)
        for a, b in zip(ref["lesions"], got["lesions"], strict=True):
            np.testing.assert_allclose(a["box"], b["box"], atol=0.02)
            assert dice(decode_rle(a["mask"]), decode_rle(b["mask"])) >= 0.98


def test_no_runner_call_is_lost_when_bentoml_would_renew_its_session(server):
    """BentoML's client of a dependency renews its session every 100 calls by default and
    closes the old one with calls in flight (dropped, or left waiting 600 s for an answer);
    ModelRunner keeps one session (service/runner.py). 120 concurrent detector calls (images
    without lesions) cross such a boundary whatever ran before."""

    def retries() -> float:
        text = httpx.get(f"{server}/metrics", timeout=10).text
        return sum(
            float(v)
            for v in re.findall(r"lesionseg_runner_call_retries_total\{[^}]*\} (\S+)", text)
        )

    blank = png_bytes(np.full((64, 64), 90, np.uint8))

    def call(_: int) -> int:
        files = {"image": ("blank.png", blank, "image/png")}
        return httpx.post(f"{server}/segment", files=files, timeout=120).status_code

    before = retries()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(120)))
    assert codes == [200] * 120
    assert retries() == before


def test_load_benchmark_dry_run(server, tmp_path):
    """`make bench`'s code end to end against this server with tiny settings (the full run
    starts one server per configuration the same way this fixture does): single-user and
    re-prompt requests, Locust with 2 users, the results and the targets table written."""
    out = tmp_path / "load"
    argv = ["--url", server, "--users", "2", "--seconds", "10", "--repeats", "2", "--out", str(out)]
    assert load_benchmark(argv) == 0
    with out.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["measure"] for r in rows] == ["single", "reprompt", "load"]
    for r in rows:
        assert int(r["requests"]) > 0 and int(r["failures"]) == 0, r
        assert float(r["p50_ms"]) > 0 and r["served"].startswith("torch"), r
    assert float(rows[2]["ok_per_s"]) > 0 and float(rows[2]["embed_ms"]) > 0
    text = out.with_suffix(".md").read_text()
    assert "## Targets (issue 13)" in text and rows[0]["commit"] in text
    assert out.with_suffix(".png").is_file()
