"""A reference teacher cache computed once per session with timm's tiny `test_vit` and random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdeit.precompute.run import precompute_teacher
from tests.precompute.helpers import config


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, dict[str, Any]]:
    """(cache directory, summary) of one uninterrupted run; copy the directory before changing it."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    return out, precompute_teacher(config(tiny_dataset, out))
