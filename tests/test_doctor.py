"""``python -m service.doctor``: the deployment check's findings, grouping and exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from lesionseg.settings import Settings
from service import auth, doctor
from service.findings import Finding
from tests.docs_pages import REPO


@pytest.fixture
def clean_env(monkeypatch):
    """No LESIONSEG_* variable: the settings a plain start has."""
    for name in [n for n in os.environ if n.upper().startswith("LESIONSEG_")]:
        monkeypatch.delenv(name)


def test_safe_defaults_on_loopback_exit_0(clean_env, capsys):
    assert doctor.main(["--host", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "no unsafe finding"
    assert {"access", "export"} <= {line for line in out.splitlines() if not line[:1].isspace()}
    assert "unsafe" not in out.replace("no unsafe finding", "")


def documented_check() -> tuple[str, list[str]]:
    """docs/deployment.md's "Deployment check": its command and its sample output's lines."""
    section = (REPO / "docs/deployment.md").read_text().split("## Deployment check", 1)[1]
    blocks = re.findall(r"```(?:bash|text)\n(.*?)```", section, re.S)
    return blocks[0].strip(), blocks[1].rstrip().splitlines()


def test_the_documented_check_exits_1_with_the_unsafe_line(tmp_path):
    # The real entry point as the docs write it: no keys, no LESIONSEG_ALLOW_ANONYMOUS, 0.0.0.0.
    command, sample = documented_check()
    assert command == "python -m service.doctor --host 0.0.0.0"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LESIONSEG_")}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")  # an empty store: the checkout's export
    proc = subprocess.run(
        [sys.executable, *command.split()[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    unsafe = [line for line in lines if line.strip().startswith("unsafe")]
    assert len(unsafe) == 1 and "0.0.0.0" in unsafe[0], proc.stdout
    assert "LESIONSEG_ALLOW_ANONYMOUS" in unsafe[0] and "LESIONSEG_API_KEYS" in unsafe[0]
    assert unsafe == [line for line in sample if line.strip().startswith("unsafe")]
    assert lines[-1] == sample[-1] == "1 unsafe finding(s)"
    topics = [line for line in sample if not line[:1].isspace()][:-1]
    assert topics == [line for line in lines if not line[:1].isspace()][:-1]
    assert "Traceback" not in proc.stderr


def test_a_setting_changed_after_the_export_is_unsafe(tmp_path):
    record = {"sam": {"multimask": False}, "detector": {"image_size": 256}}
    (tmp_path / "export.json").write_text(json.dumps(record))
    settings = Settings(backend="openvino", export_dir=tmp_path, multimask_output=True)
    (finding,) = doctor.gather(settings, "127.0.0.1", checks=[])
    assert finding.level == "unsafe" and finding.topic == "export"
    assert "LESIONSEG_MULTIMASK_OUTPUT=true" in finding.text and str(tmp_path) in finding.text
    matching = Settings(backend="openvino", export_dir=tmp_path)
    assert [f.level for f in doctor.export_findings(matching)] == ["ok"]


def test_a_missing_export_is_a_warning(tmp_path):
    (finding,) = doctor.export_findings(Settings(backend="onnxruntime", export_dir=tmp_path))
    assert finding.level == "warn" and "make export models" in finding.text


def test_every_concern_is_checked_and_a_missing_one_is_an_error():
    assert doctor.concern_checks(["service.auth"]) == [auth.findings]
    assert len(doctor.concern_checks()) == len(doctor.CONCERNS)
    with pytest.raises(ModuleNotFoundError):
        doctor.concern_checks(["service.auth", "service.no_such_concern"])
    with pytest.raises(TypeError, match="no findings"):
        doctor.concern_checks(["service.findings"])


def test_the_jobs_concern_says_where_jobs_run(tmp_path):
    from service import jobs

    (alone,) = jobs.findings(Settings(jobs_dir=tmp_path), None)
    assert alone.level == "ok" and "sqlite" in alone.text and "this process" in alone.text
    (apart,) = jobs.findings(Settings(jobs_dir=tmp_path, jobs_worker=False), None)
    assert apart.level == "warn" and "python -m service.worker" in apart.text
    url = "postgresql://u:secret@db:5432/jobs"
    (shared,) = jobs.findings(Settings(jobs_database_url=url, jobs_worker=False), None)
    assert shared.level == "ok" and "postgresql://u@db:5432/jobs" in shared.text
    assert "secret" not in shared.text


def test_report_groups_by_topic_and_counts_the_unsafe():
    findings = [
        Finding("ok", "access", "a"),
        Finding("unsafe", "time limits", "b"),
        Finding("warn", "access", "c"),
    ]
    assert doctor.report(findings).splitlines() == [
        "access",
        "  ok     a",
        "  warn   c",
        "time limits",
        "  unsafe b",
        "1 unsafe finding(s)",
    ]
