"""Backbones behind one builder, and the classifier head of the reference design.

Every model takes raw uint8 RGB [N, 256, 256, 3] and carries its own scaling: the cast and the
backbone's normalization are layers of the model, so the exported graph owns them too.

Head (the reference design, docs/model-report.md): frozen base -> GlobalAveragePooling2D ->
Dense(150, relu, L2 0.01) -> Dropout(0.5) -> Dense(1, sigmoid). The last layer is split into a
linear `logit` layer and a `probability` sigmoid so the logit stays reachable (temperature
scaling, export); the function computed is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from common import signatures
from common.preprocessing import IMAGE_SIZE

INPUT_NAME = "image"
LOGIT_LAYER = signatures.OUTPUT_LOGIT
PROBABILITY_LAYER = signatures.OUTPUT_PROBABILITY
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


def _efficientnet_lite_builder(variant: str) -> Callable[[WeightsSpec], keras.Model]:
    def build(weights: WeightsSpec) -> keras.Model:
        from training.efficientnet_lite import build_efficientnet_lite

        if weights not in ("imagenet", None):
            weights = _existing_file(weights)
        return build_efficientnet_lite(
            variant, include_top=False, weights=weights, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
        )

    return build


def _efficientnet_lite_top_layers(base: keras.Model, blocks: int) -> list[keras.layers.Layer]:
    from training.efficientnet_lite import layers_of_top_blocks

    return layers_of_top_blocks(base, blocks)


def _existing_file(path: str | os.PathLike[str]) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return str(path)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("resnet50", "caffe", _build_resnet50, _resnet50_top_layers),
    **{
        variant: BackboneSpec(
            variant, "lite", _efficientnet_lite_builder(variant), _efficientnet_lite_top_layers
        )
        for variant in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    },
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


# Several backbones side by side, their statistics concatenated: "efficientnet_lite1+efficientnet_lite2".
BACKBONE_SEPARATOR = "+"


def backbone_parts(backbone: str) -> tuple[str, ...]:
    """The backbones a (possibly combined) backbone name stands for, each checked."""
    parts = tuple(backbone.split(BACKBONE_SEPARATOR))
    for part in parts:
        backbone_spec(part)
    if len(set(parts)) != len(parts):
        raise ValueError(f"backbone {backbone!r} names a backbone twice")
    return parts


# Taps for the statistics features: the outputs of EfficientNet-Lite stages 1..5 and of the head.
TAP_STAGES = (1, 2, 3, 4, 5)
TAP_NAMES = (*(f"stage{stage}" for stage in TAP_STAGES), "head")


def build_tapped_base(
    backbone: str, weights: WeightsSpec = "imagenet", name: str = BASE_LAYER
) -> keras.Model:
    """An EfficientNet-Lite base whose outputs are the taps (stage 1..5 outputs and the head), any size."""
    spec = backbone_spec(backbone)
    if spec.normalization != "lite":
        raise ValueError(f"taps are defined for the EfficientNet-Lite backbones, not {backbone}")
    from training.efficientnet_lite import build_efficientnet_lite

    if weights not in ("imagenet", None):
        weights = _existing_file(weights)
    base = build_efficientnet_lite(backbone, include_top=False, weights=weights, input_shape=(None, None, 3))
    names = [layer.name for layer in base.layers]
    taps = [[name for name in names if name.startswith(f"blocks_{stage}_")][-1] for stage in TAP_STAGES]
    outputs = [base.get_layer(name).output for name in [*taps, "head_relu6"]]
    return keras.Model(base.input, outputs, name=name)


@keras.saving.register_keras_serializable(package="aidetect")
class ChannelStatistics(keras.layers.Layer):
    """Feature maps [N, H, W, C_i] -> [N, sum_i 2 C_i]: per map, each channel's spatial mean and std."""

    def call(self, feature_maps: list[tf.Tensor]) -> tf.Tensor:
        statistics = []
        for feature_map in feature_maps:
            values = keras.ops.cast(feature_map, "float32")
            mean = keras.ops.mean(values, axis=(1, 2))
            variance = keras.ops.mean(keras.ops.square(values), axis=(1, 2)) - keras.ops.square(mean)
            statistics += [mean, keras.ops.sqrt(keras.ops.maximum(variance, 0.0) + 1e-12)]
        return keras.ops.concatenate(statistics, axis=-1)


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


@keras.saving.register_keras_serializable(package="aidetect")
class SelectColumns(keras.layers.Layer):
    """[N, F] -> [N, len(columns)]: the feature groups a recipe uses, in order."""

    def __init__(self, columns: list[int], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.columns = [int(column) for column in columns]

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return keras.ops.take(inputs, keras.ops.convert_to_tensor(self.columns, dtype="int32"), axis=1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "columns": self.columns}


@keras.saving.register_keras_serializable(package="aidetect")
class Mirror(keras.layers.Layer):
    """Images [N, H, W, C] flipped left to right (test-time flip averaging)."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return keras.ops.flip(inputs, axis=2)


def build_statistics_classifier(
    backbone: str,
    columns: list[int],
    feature_mean: Any,
    feature_scale: Any,
    head_layers: Sequence[Sequence[Any]],
    weights: WeightsSpec = "imagenet",
    test_time_flip: bool = False,
) -> keras.Model:
    """uint8 canonical image -> P(AI): frozen EfficientNet-Lite taps -> channel statistics -> fitted head.

    The function LOSO measures (training.recipes.FittedHead on training.features), as one Keras
    model: `head_layers` are the fitted Dense weights ([kernel, bias] each; one = logistic, two =
    the reference head, hidden ReLU layer first). With `test_time_flip` the logit is the mean of
    the image's and its mirror image's. A combined `backbone` ("efficientnet_lite1+efficientnet_lite2")
    runs each base on the image and concatenates their statistics in that order, as
    training.features.FeatureStore does; its bases are named `backbone_<name>`.
    """
    import numpy as np

    parts = backbone_parts(backbone)
    bases = [
        build_tapped_base(part, weights, BASE_LAYER if len(parts) == 1 else f"{BASE_LAYER}_{part}")
        for part in parts
    ]
    for base in bases:
        base.trainable = False
    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name=INPUT_NAME)
    # build_tapped_base takes only EfficientNet-Lite bases, which share one normalization.
    normalized = BackboneNormalization(backbone_spec(parts[0]).normalization, name="normalization")(images)
    variance = np.square(np.asarray(feature_scale, dtype=np.float32))
    statistics = ChannelStatistics(name="statistics")
    concatenate = keras.layers.Concatenate(name="statistics_concatenated") if len(bases) > 1 else None
    layers: list[keras.layers.Layer] = [
        SelectColumns(columns, name="select"),
        keras.layers.Normalization(
            mean=np.asarray(feature_mean, dtype=np.float32), variance=variance, name="standardize"
        ),
    ]
    for index, (kernel, _) in enumerate(head_layers):
        last = index == len(head_layers) - 1
        units = int(np.shape(kernel)[1])
        # The model's `logit` layer is the last one: the Dense itself, or the average over the mirror pair.
        name = ("head_logit" if test_time_flip else LOGIT_LAYER) if last else "hidden"
        layers.append(keras.layers.Dense(units, activation=None if last else "relu", name=name))

    def head(pixels: keras.KerasTensor) -> keras.KerasTensor:
        per_base = [statistics(base(pixels, training=False)) for base in bases]
        values = concatenate(per_base) if concatenate else per_base[0]
        for layer in layers:
            values = layer(values)
        return values

    if test_time_flip:
        mirrored = Mirror(name="mirror")(normalized)
        logit = keras.layers.Average(name=LOGIT_LAYER)([head(normalized), head(mirrored)])
    else:
        logit = head(normalized)
    probability = keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    model = keras.Model(images, probability, name=f"aidetect_{'_'.join(parts)}_statistics")
    dense_layers = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    for layer, weights_pair in zip(dense_layers, head_layers, strict=True):
        layer.set_weights([np.asarray(weight, dtype=np.float32) for weight in weights_pair])
    return model


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
        model.inputs, {PROBABILITY_LAYER: model.output, LOGIT_LAYER: model.get_layer(LOGIT_LAYER).output}
    )


def load_classifier(path: Path) -> keras.Model:
    """Load a trained classifier saved as `.keras` (custom layers are registered above)."""
    return keras.saving.load_model(path, compile=False)
