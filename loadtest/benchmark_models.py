"""The models the benchmark measures, each as an exported version folder plus the Keras model it came from.

- `resnet50`: the ResNet50 architecture with random weights (timing does not need trained
  weights), written as a training run folder (`model.keras`, `config.json`, `evaluation.json`)
  and exported with the project's own export CLI, so it is served exactly as a trained model
  would be. Prepared once into the benchmark's work folder and reused.
- `starter`: the repository's model, `models/ai_detector/<highest version>`, and the Keras model
  of the training run named in its model card (for the baseline, which loads Keras models).

    python -m loadtest.benchmark resnet50-run DIR    # (internal) write the random-weight run
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


def write_random_resnet50_run(run_dir: Path, data: Path = DATA_DIRECTORY, seed: int = 42) -> None:
    """A training-run folder holding ResNet50 + the project's head, all weights random."""
    import keras

    from training.models import build_classifier

    keras.utils.set_random_seed(seed)
    model = build_classifier("resnet50", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    config = {
        "data": str(data),
        "backbone": "resnet50",
        "weights": None,
        "seed": seed,
        "limit_per_split": VALIDATION_IMAGES_PER_SPLIT,
        "purpose": "benchmark timing only: random weights, never trained (loadtest/benchmark_models.py)",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"keras": keras.__version__},
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Untrained: no calibration (temperature 1) and the neutral threshold.
    (run_dir / "evaluation.json").write_text(json.dumps({"temperature": 1.0, "threshold": 0.5}) + "\n")


def prepare_resnet50(work_dir: Path, variant: str, log_path: Path) -> BenchmarkModel:
    """Random-weight ResNet50 exported as <work_dir>/resnet50/models/ai_detector/<n>; reused when there."""
    run_dir = work_dir / "resnet50" / "run"
    model_dir = work_dir / "resnet50" / "models" / DEFAULT_MODEL_NAME
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
        description="ResNet50 + head, random weights (timing only)",
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
