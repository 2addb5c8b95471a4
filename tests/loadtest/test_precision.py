"""The mixed-precision check: its rule on known figures, and the CLI end to end on a tiny model.

The tiny contract model has no convolution or matrix product, so the bfloat16 rewrite leaves it
unchanged (and on a CPU without bfloat16 the rewrite is skipped): the end-to-end run checks the
plumbing and the report, not a precision; the real check is `python -m loadtest.benchmark
mixed-precision` on the served models (docs/performance.md).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common import signatures
from common.repository import CPU_SESSION_CONFIG_FILE
from loadtest import benchmark, precision
from tests.serving.local_server_support import build_tiny_saved_model


def outputs(labels: list[int], probabilities: list[float]) -> dict[str, np.ndarray]:
    return {
        signatures.OUTPUT_LABEL: np.asarray(labels, np.int32),
        signatures.OUTPUT_PROBABILITY: np.asarray(probabilities, np.float32),
    }


def test_figures_and_the_rule() -> None:
    truth = np.asarray([1, 1, 0, 0] * 50)
    fp32 = outputs([1, 1, 0, 0] * 50, [0.9, 0.6, 0.4, 0.1] * 50)
    same = precision.set_figures({precision.FP32: fp32, precision.MIXED: fp32}, truth)
    assert same["fp32_accuracy"] == same["mixed_accuracy"] == 1.0
    assert same["flipped"] == 0 and same["roc_auc_difference"] == 0.0
    assert precision.PrecisionRule().misses(same) == []

    # Two of 200 labels flip (1%: allowed), each costing accuracy (1 point: not allowed).
    labels = [1, 1, 0, 0] * 50
    labels[1] = labels[5] = 0
    probabilities = [0.9, 0.6, 0.4, 0.1] * 50
    probabilities[1] = probabilities[5] = 0.35
    mixed = outputs(labels, probabilities)
    changed = precision.set_figures({precision.FP32: fp32, precision.MIXED: mixed}, truth)
    assert changed["flipped"] == 2 and changed["flipped_fraction"] == pytest.approx(0.01)
    assert changed["accuracy_points_difference"] == pytest.approx(-1.0)
    assert changed["max_abs_probability_difference"] == pytest.approx(0.25)
    assert changed["roc_auc_difference"] < 0
    assert precision.PrecisionRule().misses(changed) == [
        "accuracy -1.00 points",
        f"ROC-AUC {changed['roc_auc_difference']:+.4f}",
    ]
    assert precision.PrecisionRule(flipped_fraction=0.005).misses(changed)[-1] == "2 labels flipped (1.00%)"


@pytest.mark.integration
@pytest.mark.model
def test_cli_checks_a_model_and_refuses_with_numbers(
    ai_vs_real_dir: Path, uploads_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    build_tiny_saved_model(models / "ai_detector" / "1", bias=0.0)
    document = tmp_path / "performance.md"
    document.write_text(f"prose\n\n{precision.BEGIN_MARKER}\nold\n{precision.END_MARKER}\n\nafter\n")
    arguments = [
        "mixed-precision",
        "--models=starter",
        f"--models-dir={models}",
        f"--data={ai_vs_real_dir}",
        f"--uploads={uploads_dir}",
        "--limit=2",
        "--batch-sizes=1,2",
        "--pairs=2",
        f"--work-dir={tmp_path / 'work'}",
        f"--output={document}",
    ]
    result = CliRunner().invoke(benchmark.app, arguments)
    assert result.exit_code == 0, result.output
    (results_file,) = (tmp_path / "work").glob("*/mixed-precision.json")
    (model,) = json.loads(results_file.read_text())["models"]
    assert model["session_config"] == str(CPU_SESSION_CONFIG_FILE)
    assert set(model["sets"]) == {"validation", "test", "loso"}
    for entry in model["sets"].values():
        assert entry["images"] > 0 and entry["flipped"] == 0 and entry["misses"] == []
        assert entry["fp32_accuracy"] == entry["mixed_accuracy"]
    assert model["verdict"] == "accepted"
    assert set(model["speed"]) == {"1", "2"}
    assert all(len(entry["fp32"]) == len(entry["mixed"]) == 2 for entry in model["speed"].values())
    text = document.read_text()
    assert text.startswith("prose\n") and text.endswith("\nafter\n") and "old" not in text
    assert "**accepted**" in text and "| loso (" in text

    # A rule nothing can meet: the model is refused, exit 1, the reasons in the report.
    impossible = partial(precision.PrecisionRule, accuracy_points=-1.0, roc_auc=-1.0, flipped_fraction=-1.0)
    monkeypatch.setattr(precision, "PrecisionRule", impossible)
    result = CliRunner().invoke(benchmark.app, arguments)
    assert result.exit_code == 1, result.output
    assert "**refused**" in document.read_text()
    assert "0 labels flipped (0.00%)" in document.read_text()
