"""A training run folder: the one type for what `python -m training.train` writes and the export reads.

    <run>/model.keras          the Keras classifier (best checkpoint)
    <run>/config.json          TrainingConfig's fields, the recipe if any, data fingerprint, code version
    <run>/splits.json          the image files of each split, exactly as training used them
    <run>/evaluation.json      temperature, threshold and metrics (python -m training.evaluate)
    <run>/history.json, data_report.json, plots/

Training writes every file through :func:`write_json` / :func:`write_splits`; the export and the
validation gate read the run through :class:`TrainingRun`, so the validation images the export
compares with are the files training held out, not a split derived again from today's data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import write_text_atomically
from common.repository import REPO_ROOT
from training.data import Example, by_split, limit_per_split, load_examples, with_splits

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
EVALUATION_FILE = "evaluation.json"
SPLITS_FILE = "splits.json"
HISTORY_FILE = "history.json"
DATA_REPORT_FILE = "data_report.json"
SPLITS = ("train", "val", "test")


class RunFolderError(ValueError):
    """The run folder lacks something a reader needs (model, config, evaluation) or it is malformed."""


class RunDataError(ValueError):
    """The images of the run's data set (its splits) cannot be found."""


def write_json(directory: Path, name: str, content: Any) -> Path:
    """One file of the run folder, written atomically (readers never see half a file)."""
    path = Path(directory) / name
    write_text_atomically(path, json.dumps(content, indent=2) + "\n")
    return path


def data_root(data: Path) -> Path:
    """The folder image paths are relative to: the data folder, or the folder of a manifest CSV."""
    data = Path(data)
    return data if data.is_dir() else data.parent


def write_splits(directory: Path, data: Path, examples: Sequence[Example]) -> Path:
    """splits.json: per split, the files training used, relative to the data set's folder."""
    root = data_root(data).resolve()
    files: dict[str, list[str]] = {split: [] for split in SPLITS}
    for example in examples:
        if example.split not in files:
            continue
        path = example.path.resolve()
        files[example.split].append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
    return write_json(directory, SPLITS_FILE, {"data": str(data), "files": files})


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found: not a training run folder") from None
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON: {error}") from None
    return config


def derive_split_files(data: Path, split: str, limit: int | None = None) -> list[Path]:
    """The files of `split` as training.data assigns them today (for runs without splits.json)."""
    examples = limit_per_split(with_splits(load_examples(Path(data))), limit)
    return [example.path for example in by_split(examples, split)]


@dataclass(frozen=True)
class TrainingRun:
    """A finished run (model, config and evaluation present), as the export reads it."""

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
        config = read_config(directory)
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
                raise RunDataError(
                    f"{self.directory / CONFIG_FILE} does not say which data it used; pass --data"
                )
            configured = Path(self.config["data"])
            candidates = [configured] if configured.is_absolute() else [configured, REPO_ROOT / configured]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise RunDataError(
            f"the run's data is not at {' or '.join(str(path) for path in candidates)}: the export validates "
            "against real validation images, so pass --data with the data set the run was trained on"
        )

    def split_files(self, split: str, data: Path | None = None) -> list[Path]:
        """The image files of `split` as training used them (splits.json; runs written before it
        existed: derived again from the data set). Every file must exist."""
        data_path = self.data_path(data)
        splits_path = self.directory / SPLITS_FILE
        if splits_path.is_file():
            root = data_root(data_path)
            names = json.loads(splits_path.read_text())["files"].get(split, [])
            paths = [root / name for name in names]
        else:
            paths = derive_split_files(data_path, split, self.config.get("limit_per_split"))
        if not paths:
            raise RunDataError(f"{data_path} has no {split} images for this run")
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise RunDataError(f"{len(missing)} {split} images of the run are missing, e.g. {missing[0]}")
        return paths
