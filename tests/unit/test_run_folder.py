"""The training run folder (training.run_folder): written by training, read by the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import run_folder
from training.data import by_split, load_examples, with_splits
from training.run_folder import RunDataError, RunFolderError, TrainingRun


def folder_dataset(root: Path, per_class: int = 10) -> Path:
    """Random block images: distinct difference hashes, so the near-duplicate-aware split spreads them."""
    rng = np.random.default_rng(3)
    for label in ("real", "ai"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            blocks = Image.fromarray(rng.integers(0, 256, (8, 9, 3), dtype=np.uint8))
            blocks.resize((72, 64), Image.Resampling.NEAREST).save(root / label / f"{index}.png")
    return root


def finished_run(directory: Path, data: Path) -> Path:
    directory.mkdir()
    (directory / run_folder.MODEL_FILE).write_bytes(b"not read here")
    run_folder.write_json(
        directory, run_folder.CONFIG_FILE, {"data": str(data), "backbone": "efficientnet_lite0"}
    )
    run_folder.write_json(directory, run_folder.EVALUATION_FILE, {"temperature": 1.5, "threshold": 0.4})
    return directory


def test_split_files_are_the_files_training_used(tmp_path: Path) -> None:
    data = folder_dataset(tmp_path / "data")
    examples = with_splits(load_examples(data))
    run = finished_run(tmp_path / "run", data)
    run_folder.write_splits(run, data, examples)
    written = json.loads((run / run_folder.SPLITS_FILE).read_text())
    assert all(not Path(name).is_absolute() for name in written["files"]["val"])  # relative: portable
    loaded = TrainingRun.load(run)
    assert loaded.temperature == 1.5 and loaded.threshold == 0.4 and loaded.backbone == "efficientnet_lite0"
    assert loaded.split_files("val") == [example.path for example in by_split(examples, "val")]
    # The files, not today's split rule: a folder moved with the run's data still resolves.
    moved = data.rename(tmp_path / "moved")
    assert [path.name for path in loaded.split_files("val", moved)] == [
        example.path.name for example in by_split(examples, "val")
    ]
    (moved / written["files"]["val"][0]).unlink()
    with pytest.raises(RunDataError, match="1 val images of the run are missing"):
        loaded.split_files("val", moved)


def test_runs_without_splits_json_derive_the_split_again(tmp_path: Path) -> None:
    data = folder_dataset(tmp_path / "data")
    loaded = TrainingRun.load(finished_run(tmp_path / "run", data))
    assert loaded.split_files("val") == run_folder.derive_split_files(data, "val")
    assert loaded.split_files("val")


def test_unfinished_or_malformed_runs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"missing model\.keras, config\.json, evaluation\.json"):
        TrainingRun.load(tmp_path)
    run = finished_run(tmp_path / "run", tmp_path)
    run_folder.write_json(run, run_folder.EVALUATION_FILE, {"temperature": "hot", "threshold": 0.5})
    with pytest.raises(RunFolderError, match="no numeric 'temperature'"):
        TrainingRun.load(run)
    (run / run_folder.CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        run_folder.read_config(run)
    with pytest.raises(RunDataError, match="is not at"):
        TrainingRun(run, {"data": str(tmp_path / "gone")}, {}).data_path()
