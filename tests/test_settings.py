"""Settings: every field described, construction reads no file, a mistyped LESIONSEG_ variable
fails at start (the CLI, the service's runner module) naming the closest setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from lesionseg.cli import main as cli_main
from lesionseg.errors import SettingsError
from lesionseg.settings import READ_ELSEWHERE, Settings, check_environment, unknown_variables
from service.drain import Drain
from service.launcher import REPO_ROOT
from service.limits import traffic_timeout_s


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_field_has_a_description(name):
    description = Settings.model_fields[name].description
    assert description and len(description) > 20, name


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("LESIONSEG_SCORE_TRESHOLD", "LESIONSEG_SCORE_THRESHOLD"),
        ("LESIONSEG_MAX_BATCHSIZE", "LESIONSEG_MAX_BATCH_SIZE"),
        ("lesionseg_devise", "LESIONSEG_DEVICE"),  # the settings read names case-insensitively
    ],
)
def test_a_mistyped_variable_names_the_closest_setting(variable, closest):
    with pytest.raises(SettingsError) as info:
        check_environment({variable: "1", "LESIONSEG_DEVICE": "cpu", "HOME": "/root"})
    assert f"{variable} is not a setting (did you mean {closest}?)" in str(info.value)


def test_every_unknown_variable_is_named_and_known_ones_pass():
    environ = {"LESIONSEG_QWERTY": "1", "LESIONSEG_BACKEND_X": "torch", "LESIONSEG_WARMUP": "0"}
    assert unknown_variables(environ) == ["LESIONSEG_BACKEND_X", "LESIONSEG_QWERTY"]
    with pytest.raises(SettingsError, match=r"LESIONSEG_QWERTY is not a setting \(no setting is"):
        check_environment(environ)
    check_environment({"LESIONSEG_API_KEYS": "k", "lesionseg_log_format": "json", "PATH": "/"})
    check_environment(dict.fromkeys(READ_ELSEWHERE, "1"))  # read by the load benchmark


def test_variables_read_elsewhere_are_read_there():
    for variable, reader in READ_ELSEWHERE.items():
        assert variable in (REPO_ROOT / reader.split()[0]).read_text(), (variable, reader)


def test_the_cli_refuses_a_mistyped_variable_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LESIONSEG_SCORE_TRESHOLD", "0.4")
    out = tmp_path / "out"
    assert cli_main(["predict", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "did you mean LESIONSEG_SCORE_THRESHOLD?" in capsys.readouterr().err
    assert not out.exists()


def test_the_service_refuses_a_mistyped_variable_at_start():
    """Both service processes import service.runner first (BentoML's start)."""
    env = {"LESIONSEG_MAX_PENDING_REQUEST": "4", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", "import service.runner"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "did you mean LESIONSEG_MAX_PENDING_REQUESTS?" in proc.stderr


def test_constructing_reads_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LESIONSEG_JOBS_DIR", raising=False)  # tests/service/conftest.py sets it
    settings = Settings(model_dir=tmp_path / "no-bundle", cache_dir=tmp_path)
    assert settings.detector_weights is None and settings.jobs_dir == tmp_path / "jobs"


def test_a_misspelt_constructor_argument_fails():
    with pytest.raises(ValidationError, match="score_treshold"):
        Settings(score_treshold=0.4)


def test_a_bad_default_window_fails_at_construction():
    with pytest.raises(ValidationError, match="default_window"):
        Settings(default_window="kidney")
    assert Settings(default_window="40,400").default_window == "40,400"


def test_the_cache_defaults_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("LESIONSEG_CACHE_DIR", raising=False)
    monkeypatch.delenv("LESIONSEG_JOBS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert (
        settings.cache_dir == tmp_path / ".cache"
        and settings.jobs_dir.parent == tmp_path / ".cache"
    )


def test_no_default_reaches_into_the_repository(tmp_path, monkeypatch):
    """What an installed wheel gets: no default path under the source tree."""
    monkeypatch.chdir(tmp_path)
    for name in ("LESIONSEG_CACHE_DIR", "LESIONSEG_JOBS_DIR", "LESIONSEG_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    source = Path(__file__).resolve().parents[1]
    for name, value in Settings().model_dump().items():
        if isinstance(value, Path):
            assert not value.resolve().is_relative_to(source), name


def test_the_drain_and_the_backstop_come_from_the_settings():
    settings = Settings(
        drain_idle_s=2, drain_timeout_s=9, request_timeout_s=10, traffic_backstop_s=5
    )
    drain = Drain.from_settings(settings)
    assert (drain.idle_s, drain.timeout_s) == (2, 9)
    assert traffic_timeout_s(settings) == 15
