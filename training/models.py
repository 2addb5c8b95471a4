"""Backbones behind one builder, and the classifier head of the reference design.

Every model takes raw uint8 RGB [N, 224, 224, 3] and carries its own scaling: the cast and the
backbone's normalization are layers of the model, so the exported graph owns them too.

Head (DEVELOPERS.md): frozen base -> GlobalAveragePooling2D -> Dense(150, relu, L2 0.01)
-> Dropout(0.5) -> Dense(1, sigmoid). The last layer is split into a linear `logit` layer and a
`probability` sigmoid so the logit stays reachable (temperature scaling, export); the
function computed is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from common.preprocessing import IMAGE_SIZE

INPUT_NAME = "image"
LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"
BASE_LAYER = "backbone"
HIDDEN_UNITS = 150
L2_FACTOR = 0.01
DROPOUT_RATE = 0.5
LEARNING_RATE = 1e-3

WeightsSpec = str | os.PathLike[str] | None  # "imagenet", a weights file, or None (random init)


@keras.saving.register_keras_serializable(package="aidetect")
class BackboneNormalization(keras.layers.Layer):
    """uint8 pixels -> the float input a backbone was trained on (kept inside the graph)."""

    def __init__(self, mode: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {mode!r}; known: {sorted(NORMALIZATIONS)}")
        self.mode = mode

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return NORMALIZATIONS[self.mode](keras.ops.cast(inputs, "float32"))

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "mode": self.mode}


def _caffe(pixels: tf.Tensor) -> tf.Tensor:
    # keras.applications.resnet50.preprocess_input: RGB -> BGR, minus the ImageNet BGR means.
    bgr = keras.ops.flip(pixels, axis=-1)
    return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype="float32")


def _lite(pixels: tf.Tensor) -> tf.Tensor:
    return (pixels - 127.0) / 128.0


NORMALIZATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {"caffe": _caffe, "lite": _lite}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone, normalize its input and choose layers for fine-tuning."""

    name: str
    normalization: str
    build_base: Callable[[WeightsSpec], keras.Model]
    fine_tune_layers: Callable[[keras.Model, int], list[keras.layers.Layer]]


def _build_resnet50(weights: WeightsSpec) -> keras.Model:
    input_shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if weights == "imagenet":
        # Downloads from the Keras weights store: works where the network allows it.
        return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    if weights is not None:
        base.load_weights(_existing_file(weights))
    return base


def _resnet50_top_layers(base: keras.Model, blocks: int) -> list[keras.layers.Layer]:
    """Layers of the last `blocks` residual blocks (conv5_block3, conv5_block2, ...)."""
    stage_blocks = [
        f"conv{stage}_block{block}_"
        for stage, count in ((5, 3), (4, 6), (3, 4), (2, 3))
        for block in range(count, 0, -1)
    ]
    prefixes = tuple(stage_blocks[:blocks])
    return [layer for layer in base.layers if layer.name.startswith(prefixes)]


def _build_efficientnet_lite0(weights: WeightsSpec) -> keras.Model:
    from training.efficientnet_lite import build_efficientnet_lite0

    if weights not in ("imagenet", None):
        weights = _existing_file(weights)
    return build_efficientnet_lite0(include_top=False, weights=weights)


def _efficientnet_lite0_top_layers(base: keras.Model, blocks: int) -> list[keras.layers.Layer]:
    from training.efficientnet_lite import layers_of_top_blocks

    return layers_of_top_blocks(base, blocks)


def _existing_file(path: str | os.PathLike[str]) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return str(path)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("resnet50", "caffe", _build_resnet50, _resnet50_top_layers),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", "lite", _build_efficientnet_lite0, _efficientnet_lite0_top_layers
    ),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_classifier(
    backbone: str, weights: WeightsSpec = "imagenet", train_base: bool = False
) -> keras.Model:
    """uint8 image -> P(AI-generated).

    By default the base is frozen and called with training=False (transfer learning).
    `train_base=True` trains the whole network, batch norm included: training from scratch,
    for when no pretrained weights can be had.
    """
    spec = backbone_spec(backbone)
    base = spec.build_base(weights)
    base.name = BASE_LAYER
    base.trainable = train_base
    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name=INPUT_NAME)
    features = BackboneNormalization(spec.normalization, name="normalization")(images)
    # training=False keeps batch norm in inference mode, also after unfreezing for fine-tuning;
    # from scratch, batch norm must learn its statistics, so it follows the training phase.
    features = base(features) if train_base else base(features, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    features = keras.layers.Dense(
        HIDDEN_UNITS,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(L2_FACTOR),
        name="hidden",
    )(features)
    features = keras.layers.Dropout(DROPOUT_RATE, name="dropout")(features)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(features)
    probability = keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    return keras.Model(images, probability, name=f"aidetect_{backbone}")


def compile_classifier(model: keras.Model, learning_rate: float = LEARNING_RATE) -> None:
    """Adam, binary cross-entropy, accuracy + AUC (the reference configuration)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def unfreeze_top_blocks(model: keras.Model, backbone: str, blocks: int) -> int:
    """Make the last `blocks` blocks of the base trainable (batch norm stays frozen). Returns layer count."""
    base = model.get_layer(BASE_LAYER)
    base.trainable = True
    chosen = {id(layer) for layer in backbone_spec(backbone).fine_tune_layers(base, blocks)}
    for layer in base.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable)


def logit_model(model: keras.Model) -> keras.Model:
    """The same network with the pre-sigmoid logit as a second output."""
    return keras.Model(
        model.inputs, {"probability": model.output, "logit": model.get_layer(LOGIT_LAYER).output}
    )


def load_classifier(path: Path) -> keras.Model:
    """Load a trained classifier saved as `.keras` (custom layers are registered above)."""
    return keras.saving.load_model(path, compile=False)
