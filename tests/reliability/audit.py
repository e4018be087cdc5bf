"""Run the whole bad-input table and print the counts docs/reliability.md reports.

    .venv/bin/python -m tests.reliability.audit [--verbose] [-k SUBSTRING]

Builds the small world of good inputs in a temporary folder, runs every case of tests/reliability/cases.py
through the command line (typer's CliRunner, in this process, with a time limit per case) and counts the
outcomes: sentences, tracebacks, silent results (exit 0), hangs, vague messages, and half-written outputs. Then
runs the shared-file cases of issue 25 (tests/reliability/test_untrusted*.py, each test named by its class: escape,
code, silent, lost, hang, unhelpful) through pytest and counts, per class, the cases that hold and those that fail.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case that is not a clean sentence")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    args = parser.parse_args(argv)
    from tests.reliability.cases import CASES
    from tests.reliability.runner import describe, run_case
    from tests.reliability.world import world_in

    cases = [c for c in CASES if args.k in c.id]
    counts: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cdeit-audit-") as tmp, world_in(Path(tmp) / "world") as world:
        built = time.perf_counter() - started
        for i, case in enumerate(cases):
            if case.needs and getattr(world, case.needs) is None:
                counts["skipped (no tmpfs)"] += 1
                continue
            outcome = run_case(case, world, Path(tmp) / f"case-{i}")
            counts[outcome.kind] += 1
            counts["half-written"] += bool(outcome.half_written)
            counts["data lost"] += any(h.endswith("(removed)") for h in outcome.half_written)
            if case.xfail:
                counts[f"of which expected to fail ({case.xfail})"] += not outcome.ok
            if args.verbose and not outcome.ok:
                print(f"--- {case.id}{' [xfail]' if case.xfail else ''}: {describe(outcome)}\n", file=sys.stderr)
    total = time.perf_counter() - started
    print(f"cases tried: {len(cases)} (world built in {built:.0f} s, all in {total:.0f} s)")
    for kind in ("sentence", "traceback", "silent", "hang", "unexpected", "vague", "half-written", "data lost"):
        print(f"{kind:>14}: {counts.pop(kind, 0)}")
    for kind, n in sorted(counts.items()):
        print(f"{kind:>14}: {n}")
    if not args.k:
        shared_file_classes()
    return 0


UNTRUSTED = ("tests/reliability/test_untrusted.py", "tests/reliability/test_untrusted_runs.py")
CLASSES = ("escape", "code", "silent", "lost", "hang", "unhelpful")


def shared_file_classes() -> dict[str, collections.Counter[str]]:
    """Run the shared-file cases through pytest; print and return, per class, how many hold and how many fail."""
    import pytest

    tally: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CLASSES}

    class Collector:
        def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
            name = report.nodeid.split("::")[-1].removeprefix("test_")
            kind = name.split("_")[0]
            if kind not in tally or (report.when != "call" and report.passed):
                return
            tally[kind]["holds" if report.passed else "skipped" if report.skipped else "fails"] += 1

    root = Path(__file__).resolve().parents[2]
    pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=", *(str(root / f) for f in UNTRUSTED)],
                plugins=[Collector()])  # fmt: skip
    print("shared files (issue 25), per class: cases that hold / fail")
    for kind in CLASSES:
        print(f"{kind:>14}: {tally[kind]['holds']} hold, {tally[kind]['fails']} fail")
    return tally


if __name__ == "__main__":
    sys.exit(main())
