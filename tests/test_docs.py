"""The docs: the site builds with `mkdocs build --strict` (broken links and anchors fail it), the
settings page is the one generated from Settings, the README stays short, and every path of the
repository that a page names exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys

import pytest

from lesionseg.datasets.examples import write_examples
from tests.docs_pages import REPO, curl_lines, pages

# A repository path as the pages write it: a top-level folder, then path characters; not one
# cut short before a pattern (`gpu.{csv,md}`, `<name>`, `*.py`).
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:lesionseg|service|export|deploy|benchmarks|tests|models|docs)"
    r"/[\w/.-]*\w/?)(?![\w{<*/.-])"
)

DOTTED = re.compile(r"\blesionseg(?:\.[a-z_][a-z0-9_]*)+")


def resolves(dotted: str) -> bool:
    """Whether ``lesionseg.a.b.c`` names a module, or an attribute of the longest module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def settings_page():
    """docs/settings_page.py as a module (a script of the docs, not a package)."""
    spec = importlib.util.spec_from_file_location("settings_page", REPO / "docs/settings_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "settings" / "index.html").is_file()
    assert (tmp_path / "site" / "viewer.png").is_file()
    assert not list((tmp_path / "site").rglob("*.py")), "the generator is not part of the site"


def test_the_settings_page_is_generated_from_settings():
    page = settings_page()
    assert page.PAGE.read_text() == page.render(), (
        "docs/settings.md differs from Settings: run .venv/bin/python docs/settings_page.py"
    )


def test_the_settings_page_lists_every_field_once():
    from lesionseg.settings import Settings

    text = (REPO / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert text.count(f"| `LESIONSEG_{name.upper()}` |") == 1, name


def test_the_settings_page_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    page = settings_page()
    stale = tmp_path / "settings.md"
    stale.write_text(page.render().replace("LESIONSEG_MAX_BATCH_SIZE", "LESIONSEG_BATCH", 1))
    monkeypatch.setattr(page, "PAGE", stale)
    assert page.main(["--check"]) == 1
    assert page.main([]) == 0 and page.main(["--check"]) == 0


def test_the_readme_is_short_and_links_the_site():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not link.startswith(("http://", "https://")):
            assert (REPO / link).exists(), link


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_repository_path_a_page_names_exists(page):
    text = page.read_text()
    missing = [
        path
        for path in sorted(set(REPO_PATH.findall(text)))
        if not (REPO / path).exists() and not (REPO / "lesionseg" / path).exists()
    ]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_library_name_a_page_uses_exists(page):
    missing = sorted({n for n in DOTTED.findall(page.read_text()) if not resolves(n)})
    assert not missing, f"{page.name} names what lesionseg does not have: {missing}"


def test_the_pages_have_curl_lines_to_run():
    """tests/service/test_docs_examples.py runs them; here: that there are some, on one line
    each, and that each sends files `make data` writes or names its output."""
    lines = curl_lines()
    assert len(lines) >= 10, lines
    for page, command in lines:
        assert "http://localhost:3000/" in command, (page, command)
        for upload in re.findall(r"=@(\S+)", command):
            assert upload.startswith("data/examples/"), (page, command)


@pytest.mark.slow
def test_the_python_library_example_runs(exported, lits, monkeypatch, capsys):
    """docs/cli.md's Python example as written, on the example slice, with the session's
    export (the default backend runs it)."""
    examples = REPO / "data" / "examples"
    if not (examples / "lits117-z110.png").exists():  # `make data` writes it
        write_examples(lits, examples, 110)
    text = (REPO / "docs" / "cli.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LESIONSEG_EXPORT_DIR", str(exported[0]))
    exec(compile(code, "docs/cli.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed, "the example found no lesion in the example slice"
    assert all(line.startswith("tumour ") for line in printed), printed
