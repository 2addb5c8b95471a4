"""A training run folder as the export reads it (written by `python -m training.train`).

The run carries its own state: `model.keras`, `config.json` (backbone, data, fingerprint, code
version) and `evaluation.json` (calibration temperature, decision threshold, metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.repository import REPO_ROOT
from export.errors import ReferenceDataError, RunFolderError

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class TrainingRun:
    directory: Path
    config: dict[str, Any]
    evaluation: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> TrainingRun:
        directory = Path(directory)
        missing = [
            name for name in (MODEL_FILE, CONFIG_FILE, EVALUATION_FILE) if not (directory / name).is_file()
        ]
        if missing:
            raise RunFolderError(
                f"{directory} is not a finished training run: missing {', '.join(missing)} "
                "(train with `python -m training.train`, evaluate with `python -m training.evaluate`)"
            )
        config = json.loads((directory / CONFIG_FILE).read_text())
        evaluation = json.loads((directory / EVALUATION_FILE).read_text())
        for key in ("temperature", "threshold"):
            if not isinstance(evaluation.get(key), int | float):
                raise RunFolderError(f"{directory / EVALUATION_FILE} has no numeric {key!r}")
        if "backbone" not in config:
            raise RunFolderError(f"{directory / CONFIG_FILE} does not name the backbone")
        return cls(directory, config, evaluation)

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def temperature(self) -> float:
        return float(self.evaluation["temperature"])

    @property
    def threshold(self) -> float:
        return float(self.evaluation["threshold"])

    def load_classifier(self) -> Any:
        from training.models import load_classifier

        return load_classifier(self.model_path)

    def data_path(self, override: Path | None = None) -> Path:
        """The run's data set: `override`, else config `data` as given (relative to the working
        folder, as training ran) or relative to the repository root."""
        if override is not None:
            candidates = [Path(override)]
        else:
            if not self.config.get("data"):
                raise ReferenceDataError(
                    f"{self.directory / CONFIG_FILE} does not say which data it used; pass --data"
                )
            configured = Path(self.config["data"])
            candidates = [configured] if configured.is_absolute() else [configured, REPO_ROOT / configured]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise ReferenceDataError(
            f"the run's data is not at {' or '.join(str(path) for path in candidates)}: the export validates "
            "against real validation images, so pass --data with the data set the run was trained on"
        )
