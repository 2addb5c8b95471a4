"""Pieces the rollout tests share: contract-following tiny SavedModels (a fast one and a slow one),
a local model server on free loopback ports, and a models.config pointing at them.

The tiny models follow the model-directory contract (tests/serving/local_server_support.py
builds them); the slow one sleeps inside its graph (tf.data's SleepDataset op, so it is saved in
the SavedModel like any other op) to play a version that answers correctly but too late.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import model_config, signatures
from common.model_config import STABLE_LABEL
from tests.serving.local_server_support import IMAGE_SIZE, MODEL_NAME, build_tiny_saved_model

PRODUCTION_BASE_PATH = f"/models/{MODEL_NAME}"


def build_model(directory: Path, *, bias: float, delay_milliseconds: int = 0) -> Path:
    """A contract SavedModel; with a delay, every Predict takes at least that long."""
    if delay_milliseconds <= 0:
        build_tiny_saved_model(directory, bias=bias)
        return directory
    import tensorflow as tf

    class SlowDetector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = tf.Variable(bias, dtype=tf.float32)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=signatures.IMAGE_INPUT)
            ],
            autograph=False,
        )
        def serve_image(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            mean = tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2, 3]) / 255.0
            dataset = tf.data.Dataset.from_tensors(mean)
            delayed = tf.raw_ops.SleepDataset(
                input_dataset=dataset._variant_tensor,
                sleep_microseconds=tf.constant(delay_milliseconds * 1000, tf.int64),
                output_types=[tf.float32],
                output_shapes=[tf.TensorShape([None])],
            )
            mean = tf.data.experimental.from_variant(delayed, dataset.element_spec).get_single_element()
            logit = 4.0 * (mean - 0.5) + self.bias
            probability = tf.sigmoid(logit)
            threshold = tf.fill(tf.shape(logit), tf.constant(0.5, tf.float32))
            return {
                signatures.OUTPUT_PROBABILITY: probability,
                signatures.OUTPUT_LOGIT: logit,
                signatures.OUTPUT_THRESHOLD: threshold,
                signatures.OUTPUT_LABEL: tf.cast(probability >= threshold, tf.int32),
            }

    module = SlowDetector()
    tf.saved_model.save(
        module,
        str(directory),
        signatures={signatures.SERVING_SIGNATURE: module.serve_image.get_concrete_function()},
    )
    card = {"name": MODEL_NAME, "backbone": "tiny-slow-test", "delay_milliseconds": delay_milliseconds}
    (directory / signatures.MODEL_CARD_FILE).write_text(json.dumps(card))
    return directory


def write_stable_config(path: Path, version: int) -> None:
    """The production models.config shape: one version (policy specific), labelled stable."""
    config = model_config.new_config(MODEL_NAME, PRODUCTION_BASE_PATH, [version])
    model_config.set_label(config, MODEL_NAME, STABLE_LABEL, version)
    model_config.save(config, path)
