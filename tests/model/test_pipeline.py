"""tf.data pipeline: bit-exact parity with the shared preprocessing, augmentation sanity, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.preprocessing import IMAGE_SIZE, decode_and_resize
from training import data, pipeline

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def examples(ai_vs_real_dir: Path) -> list[data.Example]:
    return data.limit_per_split(data.load_examples(ai_vs_real_dir), 40)


def test_evaluation_batches_are_bit_identical_to_the_gateway_preprocessing(
    examples: list[data.Example],
) -> None:
    validation = data.by_split(examples, "val")
    images, labels = next(iter(pipeline.make_dataset(validation, training=False)))
    assert images.shape == (pipeline.BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert images.dtype == tf.uint8
    for index in range(pipeline.BATCH_SIZE):
        expected = decode_and_resize(validation[index].path.read_bytes())
        assert np.array_equal(images[index].numpy(), expected), validation[index].path
        assert labels[index].numpy() == validation[index].label


def test_training_batches_are_augmented_but_keep_dtype_shape_and_labels(examples: list[data.Example]) -> None:
    tf.random.set_seed(3)
    train = data.by_split(examples, "train")
    images, labels = next(iter(pipeline.make_dataset(train, training=True)))
    assert images.shape == (pipeline.BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == tf.uint8
    assert sorted(labels.numpy().tolist()) != []
    originals = {
        tuple(decode_and_resize(example.path.read_bytes())[::37, ::37, 0].ravel()) for example in train
    }
    changed = sum(tuple(image[::37, ::37, 0].ravel()) not in originals for image in images.numpy())
    assert changed >= pipeline.BATCH_SIZE // 2


@pytest.mark.parametrize("name", ["rescale", "rotate90", "blur", "jpeg"])
def test_each_augmentation_changes_the_image(name: str) -> None:
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    only = {
        "rescale": pipeline.AugmentationConfig(
            **{**pipeline.NO_AUGMENTATION.to_dict(), "rescale_probability": 1.0}
        ),
        "rotate90": pipeline.AugmentationConfig(
            **{**pipeline.NO_AUGMENTATION.to_dict(), "rotate90_probability": 1.0}
        ),
        "blur": pipeline.AugmentationConfig(
            **{**pipeline.NO_AUGMENTATION.to_dict(), "blur_probability": 1.0}
        ),
        "jpeg": pipeline.AugmentationConfig(
            **{**pipeline.NO_AUGMENTATION.to_dict(), "jpeg_probability": 1.0}
        ),
    }[name]
    augmented = pipeline.augment(image, only).numpy()
    assert augmented.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and augmented.dtype == np.uint8
    assert np.abs(augmented.astype(int) - image.numpy().astype(int)).mean() > 5


def test_no_augmentation_is_identity() -> None:
    image = tf.constant(
        np.arange(IMAGE_SIZE * IMAGE_SIZE * 3, dtype=np.int64).reshape(IMAGE_SIZE, IMAGE_SIZE, 3) % 256,
        dtype=tf.uint8,
    )
    assert np.array_equal(pipeline.augment(image, pipeline.NO_AUGMENTATION).numpy(), image.numpy())


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="no examples"):
        pipeline.make_dataset([], training=True)
