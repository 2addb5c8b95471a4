"""A small model served through the real export graph (export.graph.ServingModule).

The network is the tiny model's brightness rule (tests/gateway/tiny_model_score.py), so every
answer can be computed in the test; everything around it is what `python -m export.export`
writes: both signatures, the bytes signature's in-graph decoder with its pixel limit (the
decompression-bomb guard that gRPC clients skipping the gateway meet), warmup records and a
model card. Hostile tensors and files sent to the model server meet the production graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from common import signatures
from export.graph import ServingModule, save_serving_module
from tests.gateway.tiny_model import write_warmup
from tests.gateway.tiny_model_score import TEMPERATURE, THRESHOLD

MODEL_NAME = "ai_detector"


def brightness_logit(images: tf.Tensor) -> tf.Tensor:
    """uint8 [N, 256, 256, 3] -> logit [N, 1], the tiny model's rule."""
    brightness = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) / 255.0
    return tf.reshape((brightness - 0.5) * 10.0, [-1, 1])


def write_contract_model(model_base_path: Path, version: int = 1) -> Path:
    """models/<name>/<version>/: the SavedModel, warmup records and model card."""
    version_path = model_base_path / str(version)
    save_serving_module(ServingModule(brightness_logit, TEMPERATURE, THRESHOLD), version_path)
    write_warmup(version_path, MODEL_NAME)
    card = {
        "model_name": MODEL_NAME,
        "version": version,
        "backbone": "brightness rule (reliability test fixture)",
        "temperature": TEMPERATURE,
        "threshold": THRESHOLD,
    }
    (version_path / signatures.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    (version_path / "model_card.md").write_text("# brightness test model\n\nFor tests only.\n")
    return version_path
