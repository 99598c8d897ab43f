"""Shared test fixtures: the repo root and the artifacts folder the notebook runs share."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The artifacts folder of the regression runs (models and datasets built once are reused)."""
    from labsupport.core.paths import artifacts_dir

    return artifacts_dir()
