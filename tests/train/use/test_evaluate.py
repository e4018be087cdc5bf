"""`cdeit evaluate`, `compare`, `predict`, `export`: metrics against direct computations, artefacts, use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.common.metrics import ece
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.trainer import train
from cdeit.train.use.evaluate import compute_metrics, error_table, mce_report

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def _fake_predictions(n: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, 10))
    label = rng.integers(0, 10, n)
    logits[np.arange(n), label] += rng.uniform(0, 3, n)  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    corruption = rng.integers(0, 11, n)
    severity = np.where(corruption == 0, 0, rng.integers(1, 6, n))
    return {"probs": probs, "label": label, "corruption": corruption, "severity": severity,
            "source": rng.integers(0, 1000, n), "index": np.arange(n)}  # fmt: skip


def test_grouped_metrics_match_direct_computation() -> None:
    p = _fake_predictions()
    m = compute_metrics(p, [str(i) for i in range(10)])
    correct = p["probs"].argmax(1) == p["label"]
    assert m["accuracy"] == pytest.approx(correct.mean())
    assert m["loss"] == pytest.approx(-np.log(p["probs"][np.arange(600), p["label"]]).mean())
    assert m["ece"] == pytest.approx(ece(torch.tensor(p["probs"]), torch.tensor(p["label"])))
    for t, name in enumerate(CORRUPTIONS):
        sel = p["corruption"] == t
        assert m["per_corruption"][name]["accuracy"] == pytest.approx(correct[sel].mean())
        assert m["per_corruption"][name]["n"] == sel.sum()
        assert m["per_corruption"][name]["ece"] == pytest.approx(
            ece(torch.tensor(p["probs"][sel]), torch.tensor(p["label"][sel]))
        )
    sel = (p["corruption"] == 5) & (p["severity"] == 3)
    assert m["per_corruption_severity_accuracy"]["fog"]["3"] == pytest.approx(correct[sel].mean())
    assert m["per_class"]["4"]["accuracy"] == pytest.approx(correct[p["label"] == 4].mean())
    assert np.array(m["class_confusion"]).sum() == 600 and np.trace(m["class_confusion"]) == correct.sum()


def test_mce_against_direct_formula() -> None:
    model, base = _fake_predictions(seed=1), _fake_predictions(seed=2)
    report = mce_report(model, base)
    wrong_m = model["probs"].argmax(1) != model["label"]
    wrong_b = base["probs"].argmax(1) != base["label"]
    ces = []
    for t in range(1, 11):
        em = sum(wrong_m[(model["corruption"] == t) & (model["severity"] == s)].mean() for s in range(1, 6))
        eb = sum(wrong_b[(base["corruption"] == t) & (base["severity"] == s)].mean() for s in range(1, 6))
        ces.append(em / eb)
    assert report["mce"] == pytest.approx(np.mean(ces))
    assert set(error_table(model)) == set(CORRUPTIONS[1:])
    assert mce_report(model, model)["mce"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for student in ("vit", "cdeit"):
        cfg = TrainConfig(student=student, distill="none", data=str(tiny_dataset), out=str(root / student), epochs=1,
                          batch_size=32, eval_batch_size=64, model_kwargs=TINY, workers=1)  # fmt: skip
        train(cfg)
        out[student] = root / student
    return out


def test_evaluate_writes_numbers_predictions_report_and_plots(runs: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(runs["cdeit"]), "--baseline", str(runs["vit"]),
                                      "--batch-size", "64", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mCE (%) vs baseline" in result.output and "corruption-type accuracy" in result.output
    ev = runs["cdeit"] / "eval"
    numbers = json.loads((ev / "test.json").read_text())
    for key in ("accuracy", "loss", "ece", "clean", "per_corruption", "per_severity", "per_class", "mce",
                "per_corruption_severity_accuracy", "corruption_head", "token_similarity", "reliability"):  # fmt: skip
        assert key in numbers, key
    assert set(numbers["token_similarity"]) == {"cls~dist", "cls~corr", "dist~corr"}
    assert np.array(numbers["corruption_head"]["confusion"]).shape == (11, 11)
    with np.load(ev / "test-predictions.npz") as z:
        assert z["probs"].shape == (110, 10) and np.allclose(z["probs"].sum(1), 1, atol=1e-5)
        assert np.array_equal(z["index"], np.arange(110)) and (z["source"] >= 20_000).all()
        # the saved predictions reproduce the reported accuracy
        assert (z["probs"].argmax(1) == z["label"]).mean() == pytest.approx(numbers["accuracy"])
    report = (ev / "report.md").read_text()
    assert "## Per image type" in report and "mCE" in report
    for png in ("test-errors.png", "test-reliability.png", "test-confusion-class.png", "test-confusion-corruption.png"):
        assert (ev / png).read_bytes()[:8] == PNG, png


def test_compare_table_and_plot(runs: dict[str, Path], tmp_path: Path) -> None:
    for run in runs.values():
        CliRunner().invoke(app, ["evaluate", str(run), "--batch-size", "64", "--device", "cpu"])
    result = CliRunner().invoke(app, ["compare", str(runs["vit"]), str(runs["cdeit"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = [x for x in (tmp_path / "compare.md").read_text().splitlines() if x.startswith("|")]
    assert table[0].startswith("| model | distillation | head strategy | n | accuracy (%)") and len(table) == 4
    assert "ViT (vit)" in table[2] and "CdeiT (cdeit)" in table[3] and "linear" in table[3]
    assert "| 1 |" in table[2]  # a single run is a group of one, without a spread
    assert (tmp_path / "compare.csv").read_text().count("\n") == 3
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG
    missing = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert missing.exit_code == 2 and "plan.json" in missing.output and "config.json" in missing.output
    unevaluated = tmp_path / "unevaluated"
    unevaluated.mkdir()
    (unevaluated / "config.json").write_text((runs["vit"] / "config.json").read_text())
    missing = CliRunner().invoke(app, ["compare", str(unevaluated)])  # compare would evaluate it, but it has no model
    assert missing.exit_code == 2 and "model.safetensors" in missing.output


def test_predict_classifies_and_reports_bad_files(runs: dict[str, Path], tmp_path: Path) -> None:
    Image.fromarray(np.full((100, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_text("not an image")
    args = ["predict", "--model", str(runs["cdeit"]), "--json"]
    files = [str(tmp_path / f) for f in ("a.png", "c.png", "b.jpg", "missing.png")]
    result = CliRunner().invoke(app, args + files)
    assert result.exit_code == 1
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [("error" in x) for x in lines] == [False, True, False, True]
    assert lines[0]["class"] and 0 < lines[0]["confidence"] <= 1 and lines[0]["corruption"] in CORRUPTIONS
    assert "not a readable image" in lines[1]["error"] and "no such file" in lines[3]["error"]


def test_export_rebuilds_with_timm(runs: dict[str, Path], tmp_path: Path) -> None:
    import timm

    import cdeit.train.core.models  # noqa: F401  (registers the students)
    from cdeit.train.core.models import load_safetensors

    result = CliRunner().invoke(app, ["export", str(runs["cdeit"]), "--to", str(tmp_path / "cdeit.safetensors")])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "cdeit.json").read_text())
    model = timm.create_model(cfg["model_name"], **cfg["kwargs"])
    model.load_state_dict(load_file(str(tmp_path / "cdeit.safetensors")))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    reference = load_safetensors(runs["cdeit"] / "model.safetensors")
    assert torch.allclose(model(x), reference(x))
    with pytest.raises(CdeitError, match="model.pt"):
        from cdeit.train.use.deploy import export

        export(runs["cdeit"], tmp_path / "model.pt")


def test_evaluate_refuses_a_non_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "config.json" in result.output


@pytest.mark.parametrize(
    ("file", "edit", "key"),
    [
        ("config.json", lambda c: c.pop("distill"), "distill"),
        ("config.json", lambda c: c.update(data=1), "data"),
        ("summary.json", lambda s: s.update(steps="7"), "steps"),
    ],
)
def test_evaluate_names_the_key_it_cannot_read(
    runs: dict[str, Path], tmp_path: Path, file: str, edit: object, key: str
) -> None:
    """A run whose config.json or summary.json lacks a key evaluate reads, or has it mistyped: one sentence."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["vit"], run, ignore=shutil.ignore_patterns("eval"))
    value = json.loads((run / file).read_text())
    edit(value)  # type: ignore[operator]
    (run / file).write_text(json.dumps(value))
    result = CliRunner().invoke(app, ["evaluate", str(run), "--batch-size", "64", "--device", "cpu"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and file in output and repr(key) in output and "Traceback" not in output, output


def test_a_damaged_evaluation_is_named(tmp_path: Path) -> None:
    """compare evaluates the runs given like the ones already evaluated: a damaged eval JSON is named, not used."""
    from cdeit.train.use.evaluate import evaluate_missing

    done, todo = tmp_path / "done", tmp_path / "todo"
    for run in (done, todo):
        (run / "eval").mkdir(parents=True)
        (run / "config.json").write_text("{}")
    (done / "eval" / "test.json").write_text(json.dumps({"data": "d", "fingerprint": "f", "ece": 0.1}))
    with pytest.raises(CdeitError, match="accuracy") as error:
        evaluate_missing([done, todo])
    assert "test.json" in str(error.value)
