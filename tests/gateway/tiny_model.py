"""A tiny SavedModel that follows the model-directory contract, for integration tests.

Its "network" is the mean brightness of the image: logit = (brightness - 0.5) * 10, so bright
images are "AI" and dark ones "real". Everything around it is as the contract says: both
signatures with the contract's tensor names and dtypes, the warmup records, a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from common import signatures
from common.preprocessing import IMAGE_SIZE
from tests.gateway.tiny_model_score import TEMPERATURE, THRESHOLD  # the formula, without TensorFlow


class TinyDetector(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.temperature = tf.Variable(TEMPERATURE, trainable=False)
        self.threshold = tf.Variable(THRESHOLD, trainable=False)

    def outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        brightness = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) / 255.0
        logit = (brightness - 0.5) * 10.0
        probability = tf.sigmoid(logit / self.temperature)
        threshold = tf.fill(tf.shape(probability), self.threshold)
        return {
            signatures.OUTPUT_PROBABILITY: probability,
            signatures.OUTPUT_LOGIT: logit,
            signatures.OUTPUT_THRESHOLD: threshold,
            signatures.OUTPUT_LABEL: tf.cast(probability >= threshold, tf.int32),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.outputs(image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        def decode(data: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            resized = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)
        )
        return self.outputs(images)


def write_warmup(version_path: Path, model_name: str) -> None:
    warmup = version_path / signatures.WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signatures.SERVING_SIGNATURE
        request.inputs[signatures.IMAGE_INPUT].CopyFrom(
            tf.make_tensor_proto(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
        )
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def write_tiny_model(model_base_path: Path, version: int = 1, model_name: str = "ai_detector") -> Path:
    """models/<name>/<version>/ with the tiny SavedModel, its warmup records and model card."""
    version_path = model_base_path / str(version)
    module = TinyDetector()
    tf.saved_model.save(
        module,
        str(version_path),
        signatures={
            signatures.SERVING_SIGNATURE: module.serve.get_concrete_function(),
            signatures.BYTES_SIGNATURE: module.serve_bytes.get_concrete_function(),
        },
    )
    write_warmup(version_path, model_name)
    card = {
        "model_name": model_name,
        "version": version,
        "backbone": "tiny-brightness (test fixture)",
        "temperature": TEMPERATURE,
        "threshold": THRESHOLD,
    }
    (version_path / signatures.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    (version_path / "model_card.md").write_text("# tiny test model\n\nBrightness decides. For tests only.\n")
    return version_path
