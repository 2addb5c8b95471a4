"""tf.data input pipeline: parallel decoding with the shared canonical normalization, cache, augment, batch.

Decoding calls :func:`common.preprocessing.decode_and_resize` (the very function the gateway
uses), so an un-augmented training tensor is bit-identical to what the gateway sends.
Augmentation works on that uint8 canonical tensor and is applied to both classes alike, and only
in ways that keep the pixels' own statistics meaningful (issue 12): flips and 90-degree
rotations (no interpolation), and rescaling, JPEG re-compression and Gaussian blur, each with the
same probability, so compression level or resampling history cannot become a shortcut. No random
resized crop and no arbitrary-angle rotation: both resample every pixel.
"""

from __future__ import annotations

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
    """Probabilities and ranges of each augmentation (rescale, JPEG and blur: one probability)."""

    flip_probability: float = 0.5
    rotate90_probability: float = 0.5  # a random multiple of 90 degrees
    max_brightness_delta: float = 0.0  # fraction of the 0..255 range
    rescale_probability: float = 0.3
    rescale_range: tuple[float, float] = (0.5, 0.9)  # downscaled by this factor, then back to full size
    jpeg_probability: float = 0.3
    jpeg_quality_range: tuple[int, int] = (60, 95)
    blur_probability: float = 0.3
    blur_max_sigma: float = 1.5

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


NO_AUGMENTATION = AugmentationConfig(
    flip_probability=0.0,
    rotate90_probability=0.0,
    max_brightness_delta=0.0,
    rescale_probability=0.0,
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


def _rescale(image: tf.Tensor, config: AugmentationConfig) -> tf.Tensor:
    """Down by a random factor and back up: the resolution history of a re-shared, resized image."""
    low, high = config.rescale_range
    side = tf.cast(tf.round(tf.random.uniform([], low, high) * IMAGE_SIZE), tf.int32)
    smaller = tf.image.resize(tf.cast(image, tf.float32), [side, side], method="bilinear", antialias=True)
    restored = tf.image.resize(smaller, [IMAGE_SIZE, IMAGE_SIZE], method="bicubic")
    return tf.cast(tf.clip_by_value(tf.round(restored), 0.0, 255.0), tf.uint8)


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
    """One random augmentation of a uint8 canonical image; returns uint8 of the same shape."""
    if config.flip_probability > 0:
        image = _with_probability(config.flip_probability, lambda: tf.image.flip_left_right(image), image)
    if config.rotate90_probability > 0:
        turns = tf.random.uniform([], 1, 4, dtype=tf.int32)
        image = _with_probability(config.rotate90_probability, lambda: tf.image.rot90(image, turns), image)
    if config.max_brightness_delta > 0:
        delta = tf.random.uniform([], -config.max_brightness_delta, config.max_brightness_delta) * 255.0
        image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32) + delta), 0.0, 255.0), tf.uint8)
    image = _with_probability(config.rescale_probability, lambda: _rescale(image, config), image)
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
    """(uint8 images [B,256,256,3], float32 labels [B]) batches.

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
