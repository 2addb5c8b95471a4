"""The one tiny contract SavedModel of the tests, written through the export's own graph.

Its "network" is a brightness rule: logit = slope * (mean pixel / 255 - 0.5) + bias (by default
slope 10, bias 0: bright images are "AI", dark ones "real"), optionally slowed down by a fixed
delay per call. Everything around it is what `python -m export.export` writes, because it *is*
export.graph.ServingModule: both signatures with the contract's names and dtypes, the bytes
signature's in-graph canonical decoder and pixel limit, warmup records, a model card. The
gateway's tests compute its answers without TensorFlow (tiny_model_score.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from common import signatures
from common.preprocessing import IMAGE_SIZE
from export.graph import ServingModule, save_serving_module
from tests.gateway.tiny_model_score import TEMPERATURE, THRESHOLD  # the formula, without TensorFlow


def brightness_network(
    slope: float = 10.0, bias: float = 0.0, delay_milliseconds: int = 0
) -> Callable[[tf.Tensor], tf.Tensor]:
    """uint8 [N, 256, 256, 3] -> logit [N, 1]; with a delay, every call takes at least that long."""

    def network(images: tf.Tensor) -> tf.Tensor:
        brightness = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) / 255.0
        if delay_milliseconds > 0:
            dataset = tf.data.Dataset.from_tensors(brightness)
            delayed = tf.raw_ops.SleepDataset(
                input_dataset=dataset._variant_tensor,
                sleep_microseconds=tf.constant(delay_milliseconds * 1000, tf.int64),
                output_types=[tf.float32],
                output_shapes=[tf.TensorShape([None])],
            )
            brightness = tf.data.experimental.from_variant(delayed, dataset.element_spec).get_single_element()
        return tf.reshape(slope * (brightness - 0.5) + bias, [-1, 1])

    return network


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


def write_contract_model(
    version_path: Path,
    *,
    model_name: str = "ai_detector",
    slope: float = 10.0,
    bias: float = 0.0,
    temperature: float = TEMPERATURE,
    threshold: float = THRESHOLD,
    delay_milliseconds: int = 0,
    warmup: bool = True,
) -> Path:
    """A version folder: the SavedModel (export.graph), warmup records unless told not to, model card."""
    network = brightness_network(slope, bias, delay_milliseconds)
    save_serving_module(ServingModule(network, temperature, threshold), version_path)
    if warmup:
        write_warmup(version_path, model_name)
    card = {
        "model_name": model_name,
        "backbone": "tiny-brightness (test fixture)",
        "temperature": temperature,
        "threshold": threshold,
        "rule": {"slope": slope, "bias": bias, "delay_milliseconds": delay_milliseconds},
        # As export writes it (gateway/verdict.py): scores in [0.35, 0.65) are inconclusive.
        "verdict_band": {"real_below": 0.35, "ai_from": 0.65, "target_error": 0.1},
    }
    (version_path / signatures.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    (version_path / "model_card.md").write_text("# tiny test model\n\nBrightness decides. For tests only.\n")
    return version_path


def write_tiny_model(model_base_path: Path, version: int = 1, model_name: str = "ai_detector") -> Path:
    """models/<name>/<version>/ with the tiny model (slope 10, bias 0), its warmup records and card."""
    path = write_contract_model(model_base_path / str(version), model_name=model_name)
    card = json.loads((path / signatures.MODEL_CARD_FILE).read_text())
    (path / signatures.MODEL_CARD_FILE).write_text(json.dumps(card | {"version": version}, indent=2))
    return path
