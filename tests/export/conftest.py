"""Fixtures of the export tests: a small real training run, and its first export.

The run is EfficientNet-Lite0 with its real ImageNet weights (converted, offline) and a random
head, saved as a training run folder would be: `model.keras`, `config.json` pointing at the
shared data with 16 images per split, and an `evaluation.json` whose threshold is the median
validation probability, so labels on both sides of it exist and label agreement means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.repository import REPO_ROOT

IMAGES_PER_SPLIT = 16
TEMPERATURE = 1.3


def run_python(arguments: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python <arguments>` from the repository root, in a fresh process."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, ai_vs_real_dir: Path) -> Path:
    import keras

    from export.reference import build_reference_set, keras_logits
    from training import run_folder, selective
    from training.data import by_split, limit_per_split, load_examples, with_splits
    from training.models import build_classifier

    run_dir = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(7)
    classifier = build_classifier("efficientnet_lite0", "imagenet")
    classifier.save(run_dir / "model.keras")
    examples = limit_per_split(with_splits(load_examples(ai_vs_real_dir)), IMAGES_PER_SPLIT)
    run_folder.write_splits(run_dir, ai_vs_real_dir, examples)  # as training.train writes it
    validation = [example.path for example in by_split(examples, "val")]
    logits = keras_logits(classifier, build_reference_set(validation).images)
    validation_probabilities = 1.0 / (1.0 + np.exp(-logits / TEMPERATURE))
    threshold = float(np.median(validation_probabilities))
    validation_labels = np.asarray([example.label for example in by_split(examples, "val")])
    config = {
        "data": str(ai_vs_real_dir),
        "backbone": "efficientnet_lite0",
        "weights": "imagenet",
        "limit_per_split": IMAGES_PER_SPLIT,
        "seed": 7,
        "data_fingerprint": "fixture",
        "code_version": "fixture",
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    evaluation = {
        "temperature": TEMPERATURE,
        "threshold": threshold,
        "threshold_rule": "median validation probability (test fixture)",
        "validation": {"count": len(validation), "accuracy": 0.5},
        "test": {
            "count": 16,
            "accuracy": 0.5,
            "roc_auc": 0.5,
            "per_source": {"imagenet-sample": {"count": 8, "accuracy": 0.5}},
            "classification_report": {"left": "out of the card"},
        },
        "test_split": "test",
        "robustness": {"clean": 0.5, "jpeg_q50": 0.5},
        "verdict_band": selective.fit_band(validation_probabilities, validation_labels, threshold),
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    return run_dir


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def first_export(tiny_run: Path, models_dir: Path) -> Path:
    """Version 1, exported through the CLI exactly as documented (plain fp32 variant)."""
    completed = run_python(
        [
            "-m",
            "export.export",
            str(tiny_run),
            "--models-dir",
            str(models_dir),
            "--variant",
            "fp32",
            "--warmup-batch-sizes",
            "1,4",
        ]
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    version_dir = models_dir / "ai_detector" / "1"
    assert version_dir.is_dir(), completed.stdout
    return version_dir
