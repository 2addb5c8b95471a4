"""Compare trained runs (backbones) on accuracy, robustness and speed: writes a markdown report.

Accuracy and robustness come from each run's `evaluation.json`; speed is measured here, for
all runs side by side in one process on the same machine (Keras model, TF eager predict:
the training-side number; serving speed is measured on the exported SavedModel by
`export/benchmark.py`). `kaggle-*` sources are reported apart: they are the photo-like AI
images and ordinary photos, the honest measure (../shared/data/README.md).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from common.preprocessing import IMAGE_SIZE

HONEST_SOURCES = ("kaggle-cashbowman", "kaggle-mix")


def measure_speed(model: Any, batch_size: int, rounds: int = 5) -> float:
    """Median milliseconds per batch of `batch_size` random uint8 images, after warm-up."""
    images = np.random.default_rng(0).integers(
        0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
    )
    model.predict_on_batch(images)  # warm-up: graph tracing and oneDNN primitive creation
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        model.predict_on_batch(images)
        timings.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(timings)


def seconds_per_epoch(config: dict[str, Any]) -> str:
    """Wall-clock training seconds per epoch, as recorded by the run (fine-tuning epochs included)."""
    if not config.get("training_seconds") or not config.get("epochs_run"):
        return "?"
    return f"{config['training_seconds'] / config['epochs_run']:.0f}"


def honest_accuracy(evaluation: dict[str, Any]) -> tuple[float, int]:
    """Accuracy over the kaggle-* test sources pooled (count-weighted)."""
    per_source = evaluation["test"]["per_source"]
    rows = [per_source[source] for source in HONEST_SOURCES if source in per_source]
    count = sum(row["count"] for row in rows)
    if count == 0:
        return float("nan"), 0
    return sum(row["accuracy"] * row["count"] for row in rows) / count, count


def compare(runs: list[Path]) -> str:
    from training.models import load_classifier

    lines = [
        "# Backbone comparison",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by `python -m training.compare` on "
        f"{platform.machine()} ({len(os.sched_getaffinity(0))} cores). "
        "Accuracy and robustness: the "
        "test split of each run's data (threshold and temperature fitted on validation). Speed: Keras "
        "`predict_on_batch`, median of 5 rounds, all runs measured one after another in this process.",
        "",
        "| run | backbone | weights | epochs | test acc | kaggle-* acc (n) | F1 | ROC-AUC "
        "| ECE calibrated | s/epoch | ms @1 | img/s @32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    robustness_rows = []
    source_rows = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        evaluation = json.loads((run / "evaluation.json").read_text())
        test = evaluation["test"]
        model = load_classifier(run / "model.keras")
        milliseconds_single = measure_speed(model, 1)
        images_per_second = 32 / (measure_speed(model, 32) / 1000.0)
        honest, honest_count = honest_accuracy(evaluation)
        lines.append(
            f"| `{run.name}` | {config['backbone']} | {config['weights']} | {config.get('epochs_run', '?')} "
            f"| {test['accuracy']:.3f} | {honest:.3f} ({honest_count}) | {test['f1']:.3f} "
            f"| {test['roc_auc']:.3f} | "
            f"{test['ece_calibrated']:.3f} | {seconds_per_epoch(config)} | {milliseconds_single:.1f} "
            f"| {images_per_second:.1f} |"
        )
        robustness = evaluation.get("robustness", {})
        robustness_rows.append(
            f"| `{run.name}` | " + " | ".join(f"{value:.3f}" for value in robustness.values()) + " |"
        )
        robustness_names = list(robustness)
        source_rows.append(
            f"| `{run.name}` | "
            + " | ".join(f"{row['accuracy']:.3f} ({row['count']})" for row in test["per_source"].values())
            + " |"
        )
        source_names = list(test["per_source"])
    lines += ["", "## Robustness (test accuracy under perturbation of the original image)", ""]
    lines += ["| run | " + " | ".join(robustness_names) + " |", "|---" * (len(robustness_names) + 1) + "|"]
    lines += robustness_rows
    lines += ["", "## Test accuracy per source (n)", ""]
    lines += ["| run | " + " | ".join(source_names) + " |", "|---" * (len(source_names) + 1) + "|"]
    lines += source_rows
    return "\n".join(lines) + "\n"


def main(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare")],
    output: Annotated[Path, typer.Option(help="Markdown report to write")] = Path(
        "docs/backbone-comparison.md"
    ),
) -> None:
    """Compare runs on accuracy, robustness and speed; writes a markdown table."""
    report = compare(runs)
    output.write_text(report)
    print(report)


if __name__ == "__main__":
    typer.run(main)
