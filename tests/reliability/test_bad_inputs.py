"""Every bad input of the table (tests/reliability/cases.py) through the real command line: a non-zero exit,
no traceback, one sentence naming the file or option, and nothing half-written in the output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.cases import CASES
from tests.reliability.runner import Case, describe, run_case, snapshot
from tests.reliability.world import World


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_the_table_is_large_enough() -> None:
    """One case per distinct error path (138 when issue 21 cut the table down): a shrinking table is a lost path."""
    assert len(CASES) >= 130
    assert len({c.id.split("/")[0] for c in CASES}) >= 15  # every command


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path) -> None:
    if case.needs and getattr(world, case.needs) is None:
        pytest.skip(f"needs a {case.needs} file system (root and tmpfs)")
    inputs = [world.data, world.data2, world.cifar, world.cache, world.cache2, world.run, world.model.parent]
    before = [snapshot(p) for p in inputs]
    outcome = run_case(case, world, tmp_path / "case")
    assert outcome.ok, describe(outcome)
    changed = [str(p) for p, b in zip(inputs, before, strict=True) if snapshot(p) != b]
    assert not changed, f"a refused command changed the shared good inputs {changed}"
