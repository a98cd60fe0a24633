"""``lesionseg train`` checks the training extra before any work starts (fast; the installed
wheel without the extra is tests/test_wheel.py)."""

from __future__ import annotations

import sys

import pytest

from lesionseg import cli
from lesionseg.train import train as train_module


@pytest.fixture
def no_work(monkeypatch):
    """``run`` (the training itself) replaced by a recorder of its calls."""
    calls = []
    monkeypatch.setattr(train_module, "run", lambda args, argv: calls.append(args) or args.out)
    return calls


@pytest.mark.parametrize(
    "hidden, sam, missing",
    [
        ("peft", "lora", "peft"),
        ("matplotlib", "none", "matplotlib"),
        ("matplotlib", "decoder", "matplotlib"),
    ],
)
def test_a_missing_extra_is_named_before_any_work(
    hidden, sam, missing, monkeypatch, no_work, capsys, tmp_path
):
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` raises ImportError
    code = cli.main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--sam", sam])
    error = capsys.readouterr().err
    assert code == 2 and no_work == []
    assert error.startswith("lesionseg train: error: the training extra is not installed")
    assert f"missing {missing}, for " in error and "pip install 'lesionseg[train]'" in error


def test_without_peft_a_run_without_lora_starts(monkeypatch, no_work, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--sam", "none"]) == 0
    assert [a.sam for a in no_work] == ["none"]


def test_help_needs_no_extra(monkeypatch, no_work, capsys):
    for module in ("peft", "matplotlib", "monai"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--help"])
    assert stopped.value.code == 0 and no_work == []
    assert "usage: lesionseg train" in capsys.readouterr().out
