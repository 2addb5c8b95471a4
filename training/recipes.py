"""Training recipes on cached frozen-backbone features: what LOSO compares, `training.train --recipe` ships.

A recipe says which backbone's features, which feature groups (training.features), which
augmented views join the clean images in training, how examples are weighted, and which head is
fitted. Heads:

- ``logistic``: L2-regularized logistic regression on standardized features (scikit-learn);
- ``reference``: the reference design's head, Dense(150, relu, L2 0.01) -> Dropout(0.5) ->
  Dense(1), Adam 1e-3, binary cross-entropy, early stopping and ReduceLROnPlateau on the held-in
  photo-like validation images, best weights kept.

Either way the fitted head becomes layers of :func:`training.models.build_statistics_classifier`,
so the exported network computes exactly the function that LOSO measured.

Weighting (``balanced``): every (source group, label) gets the same total weight within its
class, and both classes the same total, so no single source (ImageNet's 995 photos, 1,158
Stable Diffusion paintings) dominates. The four StyleGAN face sources count as one group, so
"a face close-up" cannot outweigh the other AI sources. With the data of today that puts art at
about a tenth of the AI weight and photo-like sources above half of every class.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.data import Example
from training.evaluate import choose_threshold, fit_temperature, sigmoid

# Photo-like sources holding both labels: the left-out sources of LOSO (issue 12).
LOSO_SOURCES = (
    "kaggle-cashbowman",
    "kaggle-mix",
    "realorai-gemini3",
    "real-or-ai-game",
    "aidi-study",
    "reddit-ai-detector",
)
SOURCE_GROUPS = {
    "stylegan2-faces-a": "gan-faces",
    "stylegan2-faces-b": "gan-faces",
    "stylegan2-faces-c": "gan-faces",
    "tpdne-faces": "gan-faces",
}
STATISTICS_GROUPS = tuple(
    f"{tap}_{kind}"
    for tap in ("stage1", "stage2", "stage3", "stage4", "stage5", "head")
    for kind in ("mean", "std")
)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    backbone: str = "efficientnet_lite0"
    groups: tuple[str, ...] = STATISTICS_GROUPS
    view: str = "clean"  # the view the model sees at serving time (and is evaluated on)
    augmentation_views: tuple[str, ...] = ()
    balanced: bool = True
    head: str = "logistic"
    regularization: float = 0.05  # inverse L2 strength C of the logistic head
    test_time_flip: bool = False  # average the logits of the image and its mirror image
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STAGE_GROUPS = tuple(group for group in STATISTICS_GROUPS if not group.startswith("head"))
AUGMENTATION_VIEWS = ("flip", "jpeg", "rescale", "blur")

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "today",
            "today's starter recipe without its fine-tuning: centre square resized to 224, final pooled "
            "features, reference head, no source balance",
            groups=("head_mean",),
            view="legacy224",
            balanced=False,
            head="reference",
        ),
        Recipe(
            "pooled_canonical",
            "final pooled features of the canonical 256 window at stored resolution, logistic, balanced",
            groups=("head_mean",),
        ),
        Recipe("statistics", "channel mean+std of stages 1-5 and head, canonical window, logistic, balanced"),
        Recipe("statistics_unbalanced", "as statistics, no source balance", balanced=False),
        Recipe(
            "stages", "channel mean+std of stages 1-5 only (no head), logistic, balanced", groups=STAGE_GROUPS
        ),
        Recipe(
            "stages_strong", "as stages, 10x stronger L2 (C=0.005)", groups=STAGE_GROUPS, regularization=0.005
        ),
        Recipe(
            "stages_augmented",
            "as stages, trained on clean + flip + JPEG + rescale + blur views of both classes",
            groups=STAGE_GROUPS,
            augmentation_views=AUGMENTATION_VIEWS,
        ),
        Recipe(
            "stages_flip",
            "as stages, trained on clean + flip views, mirror averaged at test time",
            groups=STAGE_GROUPS,
            augmentation_views=("flip",),
            test_time_flip=True,
        ),
        Recipe(
            "stages_reference_head",
            "as stages_augmented, with the reference head (Dense 150, dropout) instead of logistic",
            groups=STAGE_GROUPS,
            augmentation_views=AUGMENTATION_VIEWS,
            head="reference",
        ),
        Recipe(
            "stages_lite1",
            "as stages_strong, EfficientNet-Lite1 features",
            backbone="efficientnet_lite1",
            groups=STAGE_GROUPS,
            regularization=0.005,
        ),
        Recipe(
            "stages_lite2",
            "as stages_strong, EfficientNet-Lite2 features",
            backbone="efficientnet_lite2",
            groups=STAGE_GROUPS,
            regularization=0.005,
        ),
        Recipe(
            "stages_lite12_reference_head",
            "as stages_reference_head, EfficientNet-Lite1 and Lite2 stage statistics side by side",
            backbone="efficientnet_lite1+efficientnet_lite2",
            groups=STAGE_GROUPS,
            augmentation_views=AUGMENTATION_VIEWS,
            head="reference",
        ),
    )
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}") from None


def source_group(source: str) -> str:
    return SOURCE_GROUPS.get(source, source)


def example_weights(examples: Sequence[Example], balanced: bool) -> np.ndarray:
    """Per-example weights summing to len(examples): see the module docstring."""
    if not balanced:
        return np.ones(len(examples))
    group_counts = Counter((source_group(example.source), example.label) for example in examples)
    groups_per_label = Counter(label for _, label in group_counts)
    weights = np.asarray(
        [
            1.0
            / (group_counts[(source_group(example.source), example.label)] * groups_per_label[example.label])
            for example in examples
        ]
    )
    return weights * len(examples) / weights.sum()


@dataclass
class FittedHead:
    """A head on standardized features: feature_mean/feature_scale, then `layers` (numpy weights)."""

    head: str
    columns: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    layers: list[list[np.ndarray]]  # Keras Dense weights, in order
    temperature: float = 1.0
    threshold: float = 0.5

    def logits(self, features: np.ndarray) -> np.ndarray:
        values = (features[:, self.columns] - self.feature_mean) / self.feature_scale
        for index, (kernel, bias) in enumerate(self.layers):
            values = values @ kernel + bias
            if index < len(self.layers) - 1:
                values = np.maximum(values, 0.0)
        return values.reshape(-1)


def _fit_logistic(
    features: np.ndarray, labels: np.ndarray, weights: np.ndarray, recipe: Recipe
) -> list[list[np.ndarray]]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=recipe.regularization, max_iter=1000, tol=1e-3)
    model.fit(features, labels, sample_weight=weights)
    return [[model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32)]]


def _fit_reference(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    recipe: Recipe,
) -> list[list[np.ndarray]]:
    import keras

    from training import models

    keras.utils.set_random_seed(recipe.seed)
    inputs = keras.Input(shape=(features.shape[1],))
    hidden = keras.layers.Dense(
        models.HIDDEN_UNITS, activation="relu", kernel_regularizer=keras.regularizers.L2(models.L2_FACTOR)
    )(inputs)
    logit = keras.layers.Dense(1)(keras.layers.Dropout(models.DROPOUT_RATE)(hidden))
    model = keras.Model(inputs, logit)
    model.compile(
        optimizer=keras.optimizers.Adam(models.LEARNING_RATE),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.fit(
        features, labels, sample_weight=weights, validation_data=validation,
        epochs=60, batch_size=64, verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3),
        ],
    )  # fmt: skip
    dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return [
        [np.asarray(weight, dtype=np.float32) for weight in layer.get_weights()] for layer in dense_layers
    ]


def fit_head(
    recipe: Recipe,
    train_features: Sequence[np.ndarray],
    train_examples: Sequence[Example],
    calibration_features: np.ndarray,
    calibration_examples: Sequence[Example],
    columns: np.ndarray,
) -> FittedHead:
    """Fit on the training rows (one feature matrix per view, same examples), calibrate on held-in photo val.

    Temperature and threshold are fitted on the calibration images (the photo-like validation
    images of the sources used for training), never on the images the head is evaluated on.
    """
    labels = np.asarray([example.label for example in train_examples], dtype=np.float64)
    weights = example_weights(train_examples, recipe.balanced)
    stacked = np.concatenate([matrix[:, columns] for matrix in train_features]).astype(np.float64)
    all_labels, all_weights = np.tile(labels, len(train_features)), np.tile(weights, len(train_features))
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
    standardized = (stacked - mean) / scale
    calibration_labels = np.asarray([example.label for example in calibration_examples], dtype=np.float64)
    if recipe.head == "logistic":
        layers = _fit_logistic(standardized, all_labels, all_weights, recipe)
    elif recipe.head == "reference":
        validation = ((calibration_features[:, columns] - mean) / scale, calibration_labels)
        layers = _fit_reference(standardized, all_labels, all_weights, validation, recipe)
    else:
        raise ValueError(f"unknown head {recipe.head!r}: logistic or reference")
    fitted = FittedHead(recipe.head, columns, mean.astype(np.float32), scale.astype(np.float32), layers)
    calibration_logits = fitted.logits(calibration_features)
    fitted.temperature = fit_temperature(calibration_logits, calibration_labels)
    fitted.threshold = choose_threshold(sigmoid(calibration_logits / fitted.temperature), calibration_labels)
    if not math.isfinite(fitted.temperature):
        raise ValueError("calibration failed: the temperature is not finite")
    return fitted
