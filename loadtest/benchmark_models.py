"""The models the benchmark measures, each as an exported version folder plus the Keras model it came from.

- `resnet50`: the ResNet50 architecture with random base weights (no ImageNet weights offline)
  and the project's head trained on its frozen features, written as a training run folder
  (`model.keras`, `config.json`, `evaluation.json`) and exported with the project's own export
  CLI, so it is served exactly as a trained model would be. Prepared once into the benchmark's
  work folder (`resnet50-head/`; 3-4 min here) and reused.
- `starter`: the repository's model, `models/ai_detector/<highest version>`, and the Keras model
  of the training run named in its model card (for the baseline, which loads Keras models).

    python -m loadtest.benchmark resnet50-run DIR    # (internal) write the ResNet50 run
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import model_versions
from common.model_card import read_model_card
from common.model_config import DEFAULT_MODEL_NAME
from common.repository import REPO_ROOT, SHARED_DATA

DATA_DIRECTORY = SHARED_DATA
# The export validates against the run's validation images; a few per class are plenty for timing.
VALIDATION_IMAGES_PER_SPLIT = 16


class BenchmarkModelError(RuntimeError):
    """A model to benchmark is missing or could not be prepared; the message says what to do."""


@dataclass(frozen=True)
class BenchmarkModel:
    key: str
    description: str
    version_dir: Path
    keras_model: Path | None  # None: not known (no baseline can be started)
    card: dict[str, Any]

    @property
    def variant(self) -> str:
        return str(self.card.get("export", {}).get("variant", "unknown"))


def write_resnet50_run(run_dir: Path, data: Path = DATA_DIRECTORY, seed: int = 42) -> None:
    """A training-run folder holding ResNet50 with random base weights (ImageNet's cannot be had
    offline) and the project's head fitted on its frozen features of the train split: timing is
    that of the reference architecture, and accuracy is a real figure (better than chance, far from
    useful) that mixed precision must keep (`mixed-precision`).

    On random features the reference head's own training (L2 0.01 on 2,048 inputs) collapses to a
    constant, so the head holds a logistic regression instead (standardized features, C = 0.01),
    written into its layers exactly: hidden unit 0 = relu(z), unit 1 = relu(-z), logit = unit 0 -
    unit 1 = z; the other 148 units are zero."""
    import keras
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from training.data import by_split, load_examples
    from training.evaluate import choose_threshold, load_images, sigmoid
    from training.models import LOGIT_LAYER, build_classifier

    keras.utils.set_random_seed(seed)
    model = build_classifier("resnet50", None)
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    examples = load_examples(data)
    features, labels = {}, {}
    for split in ("train", "val"):
        chosen = by_split(examples, split)
        features[split] = pooled.predict(load_images(chosen), batch_size=32, verbose=0).astype(np.float64)
        labels[split] = np.asarray([example.label for example in chosen])
    scaler = StandardScaler().fit(features["train"])
    regression = LogisticRegression(C=0.01, max_iter=5000)
    regression.fit(scaler.transform(features["train"]), labels["train"])
    weights = regression.coef_[0] / scaler.scale_
    bias = regression.intercept_[0] - float(np.dot(weights, scaler.mean_))
    hidden_kernel = np.zeros((weights.size, model.get_layer("hidden").units), np.float32)
    hidden_kernel[:, 0], hidden_kernel[:, 1] = weights, -weights
    hidden_bias = np.zeros(hidden_kernel.shape[1], np.float32)
    hidden_bias[:2] = bias, -bias
    model.get_layer("hidden").set_weights([hidden_kernel, hidden_bias])
    logit_kernel = np.zeros((hidden_kernel.shape[1], 1), np.float32)
    logit_kernel[:2, 0] = 1.0, -1.0
    model.get_layer(LOGIT_LAYER).set_weights([logit_kernel, np.zeros(1, np.float32)])
    validation_logits = features["val"] @ weights + bias
    threshold = choose_threshold(sigmoid(validation_logits), labels["val"])
    # The network now computes the regression: its probabilities on a few images must be the same.
    computed = model.predict(load_images(by_split(examples, "val")[:8]), verbose=0).reshape(-1)
    if not np.allclose(computed, sigmoid(validation_logits[:8]), atol=1e-4):
        raise BenchmarkModelError(f"the head computes {computed}, the regression {validation_logits[:8]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    config = {
        "data": str(data),
        "backbone": "resnet50",
        "weights": None,
        "seed": seed,
        "limit_per_split": VALIDATION_IMAGES_PER_SPLIT,
        "purpose": "benchmark: random base, head fitted on its frozen features (loadtest/benchmark_models)",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"keras": keras.__version__},
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Threshold at the best balanced accuracy on the validation split; no temperature fitted.
    (run_dir / "evaluation.json").write_text(json.dumps({"temperature": 1.0, "threshold": threshold}) + "\n")


def prepare_resnet50(work_dir: Path, variant: str, log_path: Path) -> BenchmarkModel:
    """The ResNet50 run exported as <work_dir>/resnet50-head/models/ai_detector/<n>; reused when there."""
    run_dir = work_dir / "resnet50-head" / "run"
    model_dir = work_dir / "resnet50-head" / "models" / DEFAULT_MODEL_NAME
    for version in reversed(model_versions.versions(model_dir)):
        card = read_model_card(model_dir / str(version)) or {}
        export = card.get("export", {})
        # "auto" reuses an export that chose its variant itself (it measured candidates).
        if (variant == "auto" and "candidates" in export) or variant == export.get("variant"):
            return resnet50_model(model_dir / str(version), run_dir, card)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        steps = []
        if not (run_dir / "model.keras").is_file():
            steps.append([sys.executable, "-m", "loadtest.benchmark", "resnet50-run", str(run_dir)])
        steps.append(
            [
                sys.executable,
                "-m",
                "export.export",
                str(run_dir),
                f"--models-dir={model_dir.parent}",
                f"--name={DEFAULT_MODEL_NAME}",
                f"--variant={variant}",
            ]
        )
        for command in steps:
            print(f"  $ {' '.join(command[1:])}", flush=True)
            if subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise BenchmarkModelError(f"{' '.join(command[1:4])} failed; see {log_path}")
    versions = model_versions.versions(model_dir)
    if not versions:
        raise BenchmarkModelError(f"the export wrote no version into {model_dir}; see {log_path}")
    version_dir = model_dir / str(versions[-1])
    return resnet50_model(version_dir, run_dir, read_model_card(version_dir) or {})


def resnet50_model(version_dir: Path, run_dir: Path, card: dict[str, Any]) -> BenchmarkModel:
    return BenchmarkModel(
        key="resnet50",
        description="ResNet50 (random base) + trained head",
        version_dir=version_dir,
        keras_model=run_dir / "model.keras",
        card=card,
    )


def find_starter(
    models_dir: Path,
    model_name: str = DEFAULT_MODEL_NAME,
    keras_model: Path | None = None,
    require_keras_model: bool = True,
) -> BenchmarkModel:
    """The highest version of the repository's model and the Keras model of its training run.

    Without `require_keras_model` (measurements that start no baseline) the Keras model may be
    missing: `keras_model` is then None when the card names no run."""
    versions = model_versions.versions(models_dir / model_name)
    if not versions:
        raise BenchmarkModelError(f"no version in {models_dir / model_name}: export the starter model first")
    version_dir = models_dir / model_name / str(versions[-1])
    card = read_model_card(version_dir) or {}
    if keras_model is None:
        run = card.get("training", {}).get("run")
        if run:
            keras_model = (Path(run) if Path(run).is_absolute() else REPO_ROOT / run) / "model.keras"
        elif require_keras_model:
            raise BenchmarkModelError(
                f"{version_dir}'s model card names no training run; pass --starter-keras"
            )
    if require_keras_model and (keras_model is None or not keras_model.is_file()):
        raise BenchmarkModelError(
            f"the starter's Keras model {keras_model} is not here (runs/ is not committed): retrain it, "
            "or pass --starter-keras, or leave the starter out with --models resnet50"
        )
    backbone = card.get("backbone", "unknown backbone")
    return BenchmarkModel(
        key="starter",
        description=f"starter model {model_name} v{versions[-1]} ({backbone})",
        version_dir=version_dir,
        keras_model=keras_model,
        card=card,
    )
