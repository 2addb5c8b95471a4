"""A real, small training run through the CLI: every artifact the next stages need is written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.repository import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


EASY_SOURCES = ("sd15-cheatsheet", "imagenet-sample")  # paintings vs photos: learnable in two tiny epochs


def easy_subset(ai_vs_real_dir: Path, folder: Path) -> Path:
    """A manifest of the art-vs-photo pair only (absolute paths), whatever else the data holds."""
    with (ai_vs_real_dir / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["source"] in EASY_SOURCES]
        fields = reader.fieldnames or []
    folder.mkdir()
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, "path": str(ai_vs_real_dir / row["path"])} for row in rows)
    return folder


def test_training_cli_writes_model_history_evaluation_and_plots(ai_vs_real_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    subset = easy_subset(ai_vs_real_dir, tmp_path / "data")
    command = [
        sys.executable, "-m", "training.train",
        "--data", str(subset), "--output", str(run),
        "--backbone", "efficientnet_lite0", "--weights", "imagenet",
        "--epochs", "2", "--limit-per-split", "32",
        "--fine-tune-blocks", "1", "--fine-tune-epochs", "1",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "test accuracy" in completed.stdout

    assert (run / "model.keras").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "efficientnet_lite0" and len(config["data_fingerprint"]) == 64
    assert config["epochs_run"] == 3  # 2 frozen + 1 fine-tuning
    history = json.loads((run / "history.json").read_text())
    assert len(history["val_accuracy"]) == 3
    report = json.loads((run / "data_report.json").read_text())
    assert report["per_split_and_class"]["train/ai"] == 16

    evaluation = json.loads((run / "evaluation.json").read_text())
    assert 0.0 <= evaluation["threshold"] <= 1.0 and evaluation["temperature"] > 0
    test = evaluation["test"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece_uncalibrated", "ece_calibrated"):
        assert 0.0 <= test[key] <= 1.0, key
    assert sum(map(sum, test["confusion_matrix"])) == 32
    assert set(evaluation["robustness"]) == {
        "clean", "jpeg_q90", "jpeg_q75", "jpeg_q50", "downscale_x0.5", "gaussian_blur_sigma1.5",
    }  # fmt: skip
    assert set(test["per_source"]) == set(EASY_SOURCES)
    for plot in ("training_curves", "roc", "confusion_matrix", "reliability"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 5_000
    # ImageNet features tell paintings from photos even after two tiny epochs: far above chance.
    assert test["roc_auc"] > 0.7
