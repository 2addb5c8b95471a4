"""tf.data input pipeline: parallel decoding with the shared decode-and-resize, cache, augment, batch.

Decoding calls :func:`common.preprocessing.decode_and_resize` (the very function the gateway
uses), so an un-augmented training tensor is bit-identical to what the gateway sends.
Augmentation works on that uint8 224x224 tensor and is applied to both classes alike:
flip, small rotation, brightness (the original plan), plus random resized crop, JPEG
re-compression and Gaussian blur (as CNNDetection does), so compression level or image
size cannot become a shortcut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.preprocessing import IMAGE_SIZE, decode_and_resize
from training.data import Example

BATCH_SIZE = 32
AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of each augmentation (defaults follow CNNDetection's blur+JPEG)."""

    flip_probability: float = 0.5
    max_rotation_degrees: float = 10.0
    max_brightness_delta: float = 0.1  # fraction of the 0..255 range
    crop_probability: float = 0.5
    crop_min_area: float = 0.5  # random resized crop keeps at least this share of the area
    jpeg_probability: float = 0.5
    jpeg_quality_range: tuple[int, int] = (30, 95)
    blur_probability: float = 0.5
    blur_max_sigma: float = 3.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


NO_AUGMENTATION = AugmentationConfig(
    flip_probability=0.0,
    max_rotation_degrees=0.0,
    max_brightness_delta=0.0,
    crop_probability=0.0,
    jpeg_probability=0.0,
    blur_probability=0.0,
)


def decode_file(path: bytes | str) -> np.ndarray:
    """tf.numpy_function body: read one file and apply the shared decode-and-resize."""
    file_path = Path(path.decode() if isinstance(path, bytes) else path)
    return decode_and_resize(file_path.read_bytes())


def _decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.numpy_function(decode_file, [path], tf.uint8, stateful=False)
    image.set_shape((IMAGE_SIZE, IMAGE_SIZE, 3))
    return image, label


def _random_resized_crop(image: tf.Tensor, config: AugmentationConfig) -> tf.Tensor:
    area = tf.random.uniform([], config.crop_min_area, 1.0)
    log_ratio = tf.random.uniform([], math.log(3 / 4), math.log(4 / 3))
    ratio = tf.exp(log_ratio)
    height = tf.minimum(tf.sqrt(area / ratio), 1.0)
    width = tf.minimum(tf.sqrt(area * ratio), 1.0)
    top = tf.random.uniform([], 0.0, 1.0 - height + 1e-6)
    left = tf.random.uniform([], 0.0, 1.0 - width + 1e-6)
    box = tf.stack([top, left, top + height, left + width])[tf.newaxis]
    cropped = tf.image.crop_and_resize(
        tf.cast(image, tf.float32)[tf.newaxis], box, [0], [IMAGE_SIZE, IMAGE_SIZE], method="bilinear"
    )[0]
    return tf.cast(tf.clip_by_value(tf.round(cropped), 0.0, 255.0), tf.uint8)


def _rotate(image: tf.Tensor, max_degrees: float) -> tf.Tensor:
    angle = tf.random.uniform([], -max_degrees, max_degrees) * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    center = (IMAGE_SIZE - 1) / 2.0
    # Output pixel (x, y) samples input at R^-1 (x - c) + c; ImageProjectiveTransform wants that map.
    transform = tf.stack(
        [
            cos,
            -sin,
            center - cos * center + sin * center,
            sin,
            cos,
            center - sin * center - cos * center,
            0.0,
            0.0,
        ]
    )[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform,
        output_shape=[IMAGE_SIZE, IMAGE_SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return rotated[0]


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    radius = 7
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel_1d = kernel_1d / tf.reduce_sum(kernel_1d)
    kernel_2d = tf.tensordot(kernel_1d, kernel_1d, axes=0)
    kernel = tf.tile(kernel_2d[:, :, tf.newaxis, tf.newaxis], [1, 1, 3, 1])
    padded = tf.pad(
        tf.cast(image, tf.float32)[tf.newaxis],
        [[0, 0], [radius, radius], [radius, radius], [0, 0]],
        "REFLECT",
    )
    blurred = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    return tf.cast(tf.clip_by_value(tf.round(blurred), 0.0, 255.0), tf.uint8)


def _with_probability(probability: float, augmented: object, original: tf.Tensor) -> tf.Tensor:
    if probability <= 0.0:
        return original
    return tf.cond(tf.random.uniform([]) < probability, augmented, lambda: original)


def augment(image: tf.Tensor, config: AugmentationConfig) -> tf.Tensor:
    """One random augmentation of a uint8 [224, 224, 3] image; returns uint8 of the same shape."""
    image = _with_probability(config.crop_probability, lambda: _random_resized_crop(image, config), image)
    if config.flip_probability > 0:
        image = _with_probability(config.flip_probability, lambda: tf.image.flip_left_right(image), image)
    if config.max_rotation_degrees > 0:
        image = _rotate(image, config.max_rotation_degrees)
    if config.max_brightness_delta > 0:
        delta = tf.random.uniform([], -config.max_brightness_delta, config.max_brightness_delta) * 255.0
        image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32) + delta), 0.0, 255.0), tf.uint8)
    sigma = tf.random.uniform([], 0.1, config.blur_max_sigma)
    image = _with_probability(config.blur_probability, lambda: _gaussian_blur(image, sigma), image)
    low, high = config.jpeg_quality_range
    quality = tf.random.uniform([], low, high + 1, dtype=tf.int32)
    image = _with_probability(
        config.jpeg_probability, lambda: tf.image.adjust_jpeg_quality(image, quality), image
    )
    return tf.ensure_shape(tf.cast(image, tf.uint8), (IMAGE_SIZE, IMAGE_SIZE, 3))


def make_dataset(
    examples: Sequence[Example],
    *,
    training: bool,
    batch_size: int = BATCH_SIZE,
    augmentation: AugmentationConfig | None = None,
    seed: int = 42,
    cache: bool = True,
) -> tf.data.Dataset:
    """(uint8 images [B,224,224,3], float32 labels [B]) batches.

    Decoding runs in parallel and is cached after the first epoch; shuffling and
    augmentation happen after the cache, so each epoch sees fresh augmentations.
    """
    if not examples:
        raise ValueError("no examples to build a dataset from")
    paths = [str(example.path) for example in examples]
    labels = np.asarray([example.label for example in examples], dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        config = augmentation or AugmentationConfig()
        if config != NO_AUGMENTATION:
            dataset = dataset.map(
                lambda image, label: (augment(image, config), label), num_parallel_calls=AUTOTUNE
            )
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
