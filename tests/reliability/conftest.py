"""The suite's shared inputs: one small world of good files, built once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.world import World, world_in


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world_in(tmp_path_factory.mktemp("world")) as w:
        yield w
