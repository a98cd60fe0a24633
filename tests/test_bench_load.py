"""The load benchmark's parts that need no server: configurations, counting and the report.

Its whole code path against a real server runs in tests/service/test_serve.py."""

from __future__ import annotations

import pytest

from benchmarks.load import CONFIGS, load_row, throughput, unavailable, unknown_settings
from benchmarks.load_report import COLUMNS, figures, report


def test_configurations_this_version_cannot_run_say_why():
    assert unavailable(CONFIGS["naive"]) is None
    assert unavailable(CONFIGS["default"]) is None
    assert "backend" in unavailable({"LESIONSEG_BACKEND": "no-such-runtime"})
    assert "max_batch_size" in unavailable({"LESIONSEG_MAX_BATCH_SIZE": "0"})
    env = {"LESIONSEG_BACKEND": "torch", "LESIONSEG_NO_SUCH_SETTING": "1"}
    assert unknown_settings(env) == ["LESIONSEG_NO_SUCH_SETTING"]


def test_throughput_between_first_and_last_completion_within_the_level():
    ends = [10.0, 12.0, 14.0, 16.0, 31.0]  # the last one ended while Locust was stopping
    assert throughput(ends, start=9.0, seconds=20) == pytest.approx(0.5)
    assert throughput([10.0, 12.0], start=9.0, seconds=20) == pytest.approx(0.1)  # k / seconds
    assert throughput([], start=0.0, seconds=20) == 0.0


def test_a_load_level_counts_from_the_request_records():
    records = [
        (100.0, "/segment (example)", 400.0, ""),
        (100.5, "/segment (DICOM)", 900.0, ""),
        (100.6, "/segment (example)", 5.0, "HTTP 503: busy"),
        (101.0, "/segment (example)", 600.0, ""),
    ]
    stats = {"records": records, "failure_messages": "1x /segment (example): HTTP 503"}
    delta = {"cache_hits": None, "cache_misses": 3.0}
    delta |= {f"batch_{m}_{k}": 0.0 for m in ("detect", "embed") for k in ("sum", "count")}
    delta |= {
        f"stage_{s}_{k}": 0.0 for s in ("decode_image", "detect", "embed") for k in ("sum", "count")
    }
    delta |= {
        f"stage_{s}_{k}": 0.0 for s in ("mask_decode", "encode_response") for k in ("sum", "count")
    }
    row = load_row(stats, delta, users=2, seconds=5)
    assert (row["requests"], row["failures"]) == (4, 1)
    assert row["p50_ms"] == 600.0  # of the successful requests only
    assert row["example_p50_ms"] == 500.0
    assert row["ok_per_s"] == pytest.approx(2.0)  # 3 successes over 1 s: 2 intervals
    assert (row["cache_hits"], row["cache_misses"]) == (None, 3)
    assert set(row) <= set(COLUMNS)


BASE = {
    "date": "2026-01-01T00:00:00Z",
    "commit": "abc",
    "cpu": "Test CPU",
    "cpu_cores": 2,
    "cpu_flags": "avx512f avx512_bf16",
    "gpu": "",
    "v_torch": "1",
    "cpu_available": 2,
    "inherited_env": "",
    "run_s": 1,
}


def rows_of(config: str, single: float, again: float, one_user_ms: float, top: float) -> list:
    head = {c: None for c in COLUMNS} | {"config": config, "status": "ok", "env": "-"}
    return [
        head | {"measure": "single", "users": 1, "requests": 20, "failures": 0, "p50_ms": single},
        head | {"measure": "reprompt", "users": 1, "requests": 20, "failures": 0, "p50_ms": again},
        head
        | {"measure": "load", "users": 1, "seconds": 20, "requests": 9, "failures": 0}
        | {"mean_ms": one_user_ms, "p50_ms": one_user_ms, "ok_per_s": 1000 / one_user_ms},
        head
        | {"measure": "load", "users": 8, "seconds": 20, "requests": 40, "failures": 0}
        | {"mean_ms": 4000.0, "p50_ms": 4000.0, "ok_per_s": top},
    ]


def test_report_fills_the_targets_from_one_run(tmp_path):
    rows = rows_of("naive", 2000.0, 1900.0, 2000.0, 0.4)
    rows += rows_of("default", 400.0, 150.0, 500.0, 2.1)
    rows += [{c: None for c in COLUMNS} | {"config": "fastest", "status": "not available: x"}]
    found = figures(rows)
    assert found["single"] == {"naive": 2.0, "default": 0.4, "fastest": None}
    assert found["vs_naive"]["default"] == pytest.approx(5.25)
    assert found["holds"]["default"] == pytest.approx(2.1 / 2.0)
    text = report(rows, BASE, tmp_path / "load", {"naive": "baseline"})
    table = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "0.4 s **met**" in table["| single-user `/segment` p50, README example"]
    assert "0.15 s **missed**" in table["| re-prompt of a seen image, `/segment/boxes` p50"]
    assert "5.25x **met**" in table["| ÷ naive, req/s at 8 users, same run"]
    assert table["| single-user `/segment` p50, README example"].endswith("| n/a |")  # fastest
    assert "avx512_bf16" in text and "not available: x" in text
    assert (tmp_path / "load.md").read_text() == text and (tmp_path / "load.png").is_file()
