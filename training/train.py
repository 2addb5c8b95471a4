"""Train a detector: `python -m training.train --help`.

A run folder holds everything the next stages need, so it carries its own state:
`model.keras` (best checkpoint by val_accuracy), `config.json` (what was trained, on which
data fingerprint, with which code), `history.json`, `data_report.json`, and after the built-in
evaluation `evaluation.json` + `plots/`.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from common import signatures
from common.logs import configure_logging
from common.machine import describe_machine
from common.repository import code_version
from training import run_folder
from training.data import (
    Example,
    by_split,
    calibration_indices,
    data_report,
    dataset_fingerprint,
    limit_per_split,
    load_examples,
    with_splits,
)
from training.pipeline import BATCH_SIZE, NO_AUGMENTATION, AugmentationConfig

logger = logging.getLogger("training.train")


@dataclass
class TrainingConfig:
    data: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    train_base: bool = False  # train the whole backbone (from scratch when weights is None)
    epochs: int = 50
    batch_size: int = BATCH_SIZE
    learning_rate: float = 1e-3
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 3
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=lambda: AugmentationConfig().to_dict())
    seed: int = 42
    limit_per_split: int | None = None  # small smoke runs only


def run_provenance(examples: Sequence[Example]) -> dict[str, Any]:
    """What a run's config.json records about its data, code, library versions and machine."""
    import keras
    import tensorflow as tf

    return {
        "data_fingerprint": dataset_fingerprint(examples),
        "code_version": code_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "machine": describe_machine(),
    }


def train(config: TrainingConfig, output: Path) -> dict[str, Any]:
    """Train, checkpoint the best epoch, optionally fine-tune, evaluate. Returns the evaluation report."""
    import keras

    from training import evaluate, models
    from training.pipeline import make_dataset

    keras.utils.set_random_seed(config.seed)
    output.mkdir(parents=True, exist_ok=True)
    examples = with_splits(load_examples(Path(config.data)))
    examples = limit_per_split(examples, config.limit_per_split)
    train_examples, validation_examples = by_split(examples, "train"), by_split(examples, "val")
    if not train_examples or not validation_examples:
        raise ValueError("training needs a train and a val split (fit() always gets validation data)")

    run_folder.write_json(output, run_folder.DATA_REPORT_FILE, data_report(examples))
    run_folder.write_splits(output, Path(config.data), examples)
    augmentation = AugmentationConfig(**config.augmentation) if config.augment else NO_AUGMENTATION
    train_data = make_dataset(
        train_examples,
        training=True,
        batch_size=config.batch_size,
        augmentation=augmentation,
        seed=config.seed,
    )
    validation_data = make_dataset(validation_examples, training=False, batch_size=config.batch_size)

    run_info = {**asdict(config), **run_provenance(examples)}
    run_folder.write_json(output, run_folder.CONFIG_FILE, run_info)

    model = models.build_classifier(config.backbone, config.weights, train_base=config.train_base)
    models.compile_classifier(model, config.learning_rate)
    checkpoint_path = output / run_folder.MODEL_FILE
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.reduce_lr_factor, patience=config.reduce_lr_patience
        ),
        keras.callbacks.ModelCheckpoint(
            checkpoint_path, monitor="val_accuracy", mode="max", save_best_only=True
        ),
    ]
    started = time.monotonic()
    history = model.fit(
        train_data, validation_data=validation_data, epochs=config.epochs, callbacks=callbacks, verbose=2
    )
    combined_history = {key: [float(value) for value in values] for key, values in history.history.items()}

    if config.fine_tune_blocks > 0:
        # keras-io recipe: unfreeze the top blocks, recompile, continue at a low learning rate.
        model = models.load_classifier(checkpoint_path)
        unfrozen = models.unfreeze_top_blocks(model, config.backbone, config.fine_tune_blocks)
        logger.info("fine-tuning %d layers of the top %d blocks", unfrozen, config.fine_tune_blocks)
        models.compile_classifier(model, config.fine_tune_learning_rate)
        best_before = max(combined_history["val_accuracy"])
        fine_tune_checkpoint = keras.callbacks.ModelCheckpoint(
            checkpoint_path,
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            initial_value_threshold=best_before,
        )
        fine_history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=config.fine_tune_epochs,
            callbacks=[callbacks[0], callbacks[1], fine_tune_checkpoint],
            verbose=2,
        )
        for key, values in fine_history.history.items():
            combined_history.setdefault(key, []).extend(float(value) for value in values)

    run_folder.write_json(output, run_folder.HISTORY_FILE, combined_history)
    run_info["training_seconds"] = round(time.monotonic() - started, 1)
    run_info["epochs_run"] = len(combined_history["loss"])
    run_folder.write_json(output, run_folder.CONFIG_FILE, run_info)
    return evaluate.evaluate_run(output)


def train_recipe(recipe_name: str, data: Path, output: Path, cache: Path) -> dict[str, Any]:
    """Fit a recipe's head on the train split (all sources), calibrate on photo-like val, save, evaluate.

    The head is fitted on cached features (training.features) and becomes the last layers of
    models.build_statistics_classifier; a check on validation images proves the saved Keras model
    computes the same logits as the fitted head did on the cached features.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from training import evaluate, features, models, recipes

    recipe = recipes.recipe(recipe_name)
    keras.utils.set_random_seed(recipe.seed)
    output.mkdir(parents=True, exist_ok=True)
    examples = with_splits(load_examples(data))
    run_folder.write_json(output, run_folder.DATA_REPORT_FILE, data_report(examples))
    run_folder.write_splits(output, data, examples)
    store = features.FeatureStore(examples, cache)
    columns = features.groups_for(recipe.backbone).columns(recipe.groups)
    train_index = [index for index, example in enumerate(examples) if example.split == "train"]
    calibration_index = calibration_indices(examples)
    views = [recipe.view, *recipe.augmentation_views]
    started = time.monotonic()
    head = recipes.fit_head(
        recipe,
        [store.get(recipe.backbone, view)[train_index] for view in views],
        [examples[index] for index in train_index],
        store.get(recipe.backbone, recipe.view)[calibration_index],
        [examples[index] for index in calibration_index],
        columns,
    )
    model = models.build_statistics_classifier(
        recipe.backbone, columns.tolist(), head.feature_mean, head.feature_scale, head.layers,
        test_time_flip=recipe.test_time_flip,
    )  # fmt: skip
    model.save(output / run_folder.MODEL_FILE)

    # The saved model must compute what the head computed on the cached features.
    check = calibration_index[:32]
    pixels = np.stack([features.view_pixels(examples[index], recipe.view) for index in check])
    keras_logits = np.asarray(
        models.logit_model(model)(tf.constant(pixels))[signatures.OUTPUT_LOGIT]
    ).reshape(-1)
    cached = store.get(recipe.backbone, recipe.view)[check]
    expected = head.logits(cached)
    if recipe.test_time_flip:
        expected = (expected + head.logits(store.get(recipe.backbone, "flip")[check])) / 2.0
    largest_difference = float(np.max(np.abs(keras_logits - expected)))
    if largest_difference > 1e-2:
        raise ValueError(f"the Keras model's logits differ from the fitted head's by {largest_difference}")

    run_info = {
        **TrainingConfig(
            data=str(data), backbone=recipe.backbone, epochs=0, augment=bool(recipe.augmentation_views)
        ).__dict__,
        "recipe": recipe.to_dict(),
        "head_fit_seconds": round(time.monotonic() - started, 1),
        "logit_check": {"images": len(check), "max_abs_difference": largest_difference},
        **run_provenance(examples),
        "epochs_run": 0,
    }
    run_folder.write_json(output, run_folder.CONFIG_FILE, run_info)
    return evaluate.evaluate_run(output)


def main(
    data: Annotated[
        Path, typer.Option(help="Dataset: manifest folder/CSV, Kaggle train.csv, or real/ + ai/ folders")
    ],
    output: Annotated[
        Path, typer.Option(help="Run folder to write (model.keras, config.json, evaluation.json, plots/)")
    ],
    backbone: Annotated[str, typer.Option(help="resnet50 | efficientnet_lite0")] = "efficientnet_lite0",
    weights: Annotated[
        str, typer.Option(help="'imagenet', a weights file, or 'none' (random init)")
    ] = "imagenet",
    train_base: Annotated[
        bool, typer.Option(help="Train the whole backbone too (from scratch with --weights none)")
    ] = False,
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs (early stopping on val_accuracy, patience 5)")
    ] = 50,
    batch_size: Annotated[int, typer.Option()] = BATCH_SIZE,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    fine_tune_blocks: Annotated[
        int, typer.Option(help="Unfreeze this many top blocks after the frozen phase (0 = off)")
    ] = 0,
    fine_tune_epochs: Annotated[int, typer.Option()] = 10,
    fine_tune_learning_rate: Annotated[float, typer.Option()] = 1e-5,
    augment: Annotated[
        bool, typer.Option(help="Flip, rotation, brightness, crop, JPEG, blur on both classes")
    ] = True,
    seed: Annotated[int, typer.Option()] = 42,
    limit_per_split: Annotated[
        int | None, typer.Option(help="Use only the first N images of each split (smoke runs)")
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="Fit a recipe of training.recipes on cached frozen features instead (LOSO-selected)"
        ),
    ] = None,
    feature_cache: Annotated[Path, typer.Option(help="Feature cache folder for --recipe")] = Path(
        "runs/features"
    ),
) -> None:
    """Train a detector on labelled images, then evaluate it on val (calibration, threshold) and test."""
    configure_logging(stream=sys.stderr)
    from training.evaluate import summary_line

    if recipe is not None:
        print(summary_line(train_recipe(recipe, data, output, feature_cache)))
        return
    config = TrainingConfig(
        data=str(data),
        backbone=backbone,
        weights=None if weights.lower() == "none" else weights,
        train_base=train_base,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        fine_tune_blocks=fine_tune_blocks,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        augment=augment,
        seed=seed,
        limit_per_split=limit_per_split,
    )
    print(summary_line(train(config, output)))


if __name__ == "__main__":
    typer.run(main)
