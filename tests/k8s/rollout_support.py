"""Pieces the rollout tests share: contract-following tiny SavedModels (a fast one and a slow one),
a local model server on free loopback ports, and a models.config pointing at them.

The tiny models follow the model-directory contract (tests/serving/local_server_support.py
builds them); the slow one sleeps inside its graph (tf.data's SleepDataset op, so it is saved in
the SavedModel like any other op) to play a version that answers correctly but too late.
"""

from __future__ import annotations

from pathlib import Path

from common import model_config
from common.model_config import STABLE_LABEL
from tests.serving.local_server_support import MODEL_NAME, build_tiny_saved_model

PRODUCTION_BASE_PATH = f"/models/{MODEL_NAME}"


def build_model(directory: Path, *, bias: float, delay_milliseconds: int = 0) -> Path:
    """A contract SavedModel; with a delay, every Predict takes at least that long."""
    if delay_milliseconds <= 0:
        build_tiny_saved_model(directory, bias=bias)
        return directory
    from tests.gateway.tiny_model import write_contract_model

    return write_contract_model(
        directory, model_name=MODEL_NAME, slope=4.0, bias=bias, threshold=0.5, temperature=1.0,
        delay_milliseconds=delay_milliseconds, warmup=False,
    )  # fmt: skip


def write_stable_config(path: Path, version: int) -> None:
    """The production models.config shape: one version (policy specific), labelled stable."""
    config = model_config.new_config(MODEL_NAME, PRODUCTION_BASE_PATH, [version])
    model_config.set_label(config, MODEL_NAME, STABLE_LABEL, version)
    model_config.save(config, path)
