"""Session fixtures: the LiTS case written once in every layout."""

from __future__ import annotations

import pytest

from . import fixtures


@pytest.fixture(scope="session")
def layouts(lits, tmp_path_factory) -> dict:
    """layout name -> (path, open_dataset keyword arguments) of the LiTS slabs in that layout."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        "nnunet": (fixtures.write_nnunet(lits, root / "nnunet"), {}),
        "msd": (fixtures.write_nnunet(lits, root / "msd", msd=True), {}),
    }
