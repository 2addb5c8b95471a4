"""EfficientNet-Lite0/1/2 with the converted ImageNet weights classify real ImageNet images.

Top-1 accuracy on the ~995 `imagenet-sample` images of the shared data set is the
end-to-end check of the conversion: a wrong kernel layout, BatchNorm order or padding
rule (PyTorch-style symmetric instead of TF "SAME") costs several points or more.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from common.preprocessing import decode_and_resize
from common.repository import SHARED_DATA
from training import efficientnet_lite

pytestmark = pytest.mark.model

IMAGENET_SOURCE = "imagenet-sample"
BATCH_SIZE = 32
MINIMUM_TOP1_ACCURACY = 0.70


@pytest.fixture(scope="module")
def imagenet_model() -> keras.Model:
    return efficientnet_lite.build_efficientnet_lite0(include_top=True, weights="imagenet")


def load_imagenet_sample() -> tuple[np.ndarray, np.ndarray]:
    """uint8 canonical images (shared decode-and-resize) and their ImageNet class indices."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data set not found at {SHARED_DATA}")
    with (SHARED_DATA / "manifest.csv").open(newline="") as manifest_file:
        rows = [row for row in csv.DictReader(manifest_file) if row["source"] == IMAGENET_SOURCE]
    if not rows:
        raise ValueError(f"no {IMAGENET_SOURCE} rows in {SHARED_DATA / 'manifest.csv'}")
    pixels = np.stack([decode_and_resize((SHARED_DATA / row["path"]).read_bytes()) for row in rows])
    class_indices = np.array([int(row["imagenet_index"]) for row in rows])
    return pixels, class_indices


def predict_logits(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """Logits in batches, normalizing each batch as the model expects: (x - 127) / 128.

    Normalizing batch by batch keeps memory at the uint8 images (~150 MB) instead of
    a float32 copy of all of them (~600 MB).
    """
    batches = [
        model.predict_on_batch((pixels[start : start + BATCH_SIZE].astype(np.float32) - 127.0) / 128.0)
        for start in range(0, len(pixels), BATCH_SIZE)
    ]
    return np.concatenate(batches)


@pytest.fixture(scope="module")
def imagenet_sample() -> tuple[np.ndarray, np.ndarray]:
    return load_imagenet_sample()


@pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
def test_imagenet_top1_accuracy(variant: str, imagenet_sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, class_indices = imagenet_sample
    model = efficientnet_lite.build_efficientnet_lite(
        variant, include_top=True, weights="imagenet", input_shape=pixels.shape[1:]
    )

    started = time.perf_counter()
    logits = predict_logits(model, pixels)
    elapsed_seconds = time.perf_counter() - started

    top5_predictions = np.argsort(-logits, axis=1)[:, :5]
    top1_accuracy = float(np.mean(top5_predictions[:, 0] == class_indices))
    top5_accuracy = float(np.mean(np.any(top5_predictions == class_indices[:, None], axis=1)))
    print(
        f"{variant} on {len(pixels)} ImageNet images: top-1 {top1_accuracy:.4f}, "
        f"top-5 {top5_accuracy:.4f}, inference {elapsed_seconds:.1f} s"
    )
    assert logits.shape == (len(pixels), efficientnet_lite.IMAGENET_CLASS_COUNT)
    assert top1_accuracy >= MINIMUM_TOP1_ACCURACY


def test_feature_extractor_outputs_head_feature_map() -> None:
    model = efficientnet_lite.build_efficientnet_lite0(include_top=False, weights="imagenet")

    assert model.output_shape == (None, 7, 7, efficientnet_lite.HEAD_CHANNELS)  # 224 input by default
    assert model.get_layer("blocks_3_1_dw_conv").kernel.shape == (3, 3, 480, 1)
    assert not any(layer.name.startswith(efficientnet_lite.TOP_LAYER_PREFIX) for layer in model.layers)


def test_same_padding_matches_tensorflow_asymmetric_pads() -> None:
    # Keras "same" must pad stride-2 convs like TF (less on top/left), which the weights expect.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 224, 224, 8)).astype(np.float32)
    for kernel_size, pads in ((3, (0, 1)), (5, (1, 2))):
        same = keras.layers.DepthwiseConv2D(kernel_size, strides=2, padding="same", use_bias=False)
        same.build(images.shape)
        same.set_weights([rng.normal(size=(kernel_size, kernel_size, 8, 1)).astype(np.float32)])
        valid = keras.layers.DepthwiseConv2D(kernel_size, strides=2, padding="valid", use_bias=False)
        padded = keras.layers.ZeroPadding2D((pads, pads))(images)
        valid.build(padded.shape)
        valid.set_weights(same.get_weights())

        np.testing.assert_allclose(same(images), valid(padded), rtol=1e-5, atol=1e-5)


def test_fine_tuning_layer_selection(imagenet_model: keras.Model) -> None:
    from_stage_5 = {layer.name for layer in efficientnet_lite.layers_from_block(imagenet_model, 5)}
    last_two_blocks = {layer.name for layer in efficientnet_lite.layers_of_top_blocks(imagenet_model, 2)}

    assert "blocks_5_0_expand_conv" in from_stage_5
    assert "blocks_6_0_project_bn" in from_stage_5
    assert "head_conv" in from_stage_5
    assert not any(name.startswith(("blocks_4_", "stem_", "top_")) for name in from_stage_5)
    assert {"_".join(name.split("_")[:3]) for name in last_two_blocks if name.startswith("blocks_")} == {
        "blocks_5_3",
        "blocks_6_0",
    }
    assert "head_conv" in last_two_blocks


def test_keras_weights_file_round_trip(imagenet_model: keras.Model, tmp_path: Path) -> None:
    weights_path = tmp_path / "lite0.weights.h5"
    imagenet_model.save_weights(weights_path)

    reloaded = efficientnet_lite.build_efficientnet_lite0(include_top=True, weights=weights_path)

    for original, restored in zip(imagenet_model.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())


@pytest.mark.parametrize(
    ("variant", "block_count", "last_stage_channels"),
    [("efficientnet_lite1", 21, 320), ("efficientnet_lite2", 21, 352)],
)
def test_larger_variants_use_every_checkpoint_tensor(
    variant: str, block_count: int, last_stage_channels: int
) -> None:
    # assign_state_dict refuses unused or mis-shaped tensors, so building with weights checks the layout.
    model = efficientnet_lite.build_efficientnet_lite(variant, include_top=True, weights="imagenet")

    blocks = {
        "_".join(layer.name.split("_")[:3]) for layer in model.layers if layer.name.startswith("blocks_")
    }
    assert len(blocks) == block_count
    assert model.get_layer("head_conv").kernel.shape == (
        1,
        1,
        last_stage_channels,
        efficientnet_lite.HEAD_CHANNELS,
    )
    top_two = [layer.name for layer in efficientnet_lite.layers_of_top_blocks(model, 2)]
    assert {"_".join(name.split("_")[:3]) for name in top_two if name.startswith("blocks_")} == {
        "blocks_5_4",
        "blocks_6_0",
    }
    assert "head_conv" in top_two
