"""The analysis scripts under bench/ that docs cite run on a small cache (their numbers are the docs' business)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_on_views_scores_every_kind_of_target(views_cache: Path, tiny_dataset: Path) -> None:
    from cdeit.common.cache import load_augmented_views

    result = _module("teacher_on_views").measure(str(views_cache), str(tiny_dataset), 3.0)
    views = load_augmented_views(views_cache, tiny_dataset)
    mixed = int((views.params.mode == 1).sum())
    assert result["clean sample (plain cache)"]["n"] == 220
    kinds = [k for k in result if k.startswith("view,")]
    assert sum(result[k]["n"] for k in kinds) == 220 * views.views  # every view counted once
    assert result["Mixup pairs, blended clean targets (default trainer)"]["n"] == mixed > 0
    for r in result.values():
        assert 0 <= r["accuracy"] <= 1 and 0.1 <= r["confidence"] <= 1  # probabilities of 10 classes


def test_study_script_is_valid_bash_and_refuses_an_unknown_arm(tmp_path: Path) -> None:
    script = BENCH / "consistent_views_study.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = tmp_path / "study"
    done = subprocess.run(["bash", str(script), "DATA", str(out), "BASE", "a z"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown arm z: choose from vit a b c" in done.stderr
    assert not out.exists()  # refused before any work


def test_confidence_weights_the_bins_by_their_counts(tmp_path: Path) -> None:
    run = tmp_path / "run-s0"
    (run / "eval").mkdir(parents=True)
    bins = {"count": [0, 3, 1], "accuracy": [None, 0.5, 1.0], "confidence": [None, 0.4, 0.8]}
    (run / "eval" / "test.json").write_text(json.dumps({"accuracy": 0.625, "reliability": bins}))
    accuracy, confidence = _module("confidence").accuracy_and_confidence(run, "test")
    assert accuracy == 0.625 and abs(confidence - (3 * 0.4 + 0.8) / 4) < 1e-12


def test_bench_train_steps_each_teacher_through_the_extension_point(tiny_dataset: Path, tmp_path: Path) -> None:
    """bench_train's trainers: (a) a CachedTeacher and (b) the online teacher given as `teacher=`, (c) none."""
    from cdeit.train.core.online import OnlineTeacher
    from cdeit.train.core.teachers import CachedTeacher, NoTeacher

    bench = _module("bench_train")
    tiny = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    trainers = bench.build_trainers(str(tiny_dataset), 32, "cpu", workers=1, out=tmp_path, model_kwargs=tiny)
    kinds = {name: type(t.teacher) for name, t in trainers.items()}
    assert kinds == {"a_cached": CachedTeacher, "b_online": OnlineTeacher, "c_none": NoTeacher}
    for name in ("a_cached", "c_none"):  # (b) runs a 224px teacher: too slow for the suite
        assert bench.measure(trainers[name], steps=1, warmup=1) > 0
        assert trainers[name].state.step == 2


def test_regime_figure_applies_the_written_rule_and_draws_each_size(tmp_path: Path) -> None:
    """bench/regime/figure.py (docs/results.md's regime study): an interval wholly above 0 pays, wholly below costs,
    else unresolved; the table and figure come from its rows."""
    spec = importlib.util.spec_from_file_location("regime_figure", BENCH / "regime" / "figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    assert figure.verdict({"mean": 1.0, "low": 0.1, "high": 2.0}) == "pays"
    assert figure.verdict({"mean": -1.0, "low": -2.0, "high": -0.1}) == "costs"
    assert figure.verdict({"mean": 1.0, "low": -0.1, "high": 2.0}) == "unresolved"
    assert figure.verdict({"mean": 1.0}) == "n < 2"
    assert figure.verdict({"mean": 0.1, "low": 0.05, "high": 0.2}, ("rises", "falls")) == "rises"
    rows = []
    for size in (1100, 5500):
        for epochs in (3, 10):
            rows.append({"size": size, "epochs": epochs, "arm": "vit", "n": 3, "accuracy": 20.0, "accuracy_sd": 1.0,
                         "ece": 0.1, "teacher_accuracy": 60.0})  # fmt: skip
            for arm in figure.ARMS:
                rows.append({"size": size, "epochs": epochs, "arm": arm, "n": 3, "accuracy": 21.0, "accuracy_sd": 1.0,
                             "ece": 0.08, "teacher_accuracy": 60.0, "d_accuracy": 1.0, "d_accuracy_low": 0.5,
                             "d_accuracy_high": 1.5, "accuracy_verdict": "pays", "d_ece": -0.02, "d_ece_low": -0.03,
                             "d_ece_high": -0.01, "ece_verdict": "falls"})  # fmt: skip
    figure.write_table(rows, tmp_path / "regime.md", tmp_path / "regime.csv")
    figure.draw(rows, tmp_path / "regime.png")
    table = (tmp_path / "regime.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "+1.00 [+0.50, +1.50]" in table[3]
    assert (tmp_path / "regime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
