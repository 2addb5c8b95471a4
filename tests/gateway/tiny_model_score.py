"""What the tiny contract model of tiny_model.py answers, computed without TensorFlow.

score = sigmoid((brightness - 0.5) * 10 / temperature), brightness = mean pixel / 255 of the
shared preprocessing's canonical 256x256 tensor. Tests compare the gateway's answer with this: equality
proves the tensor reached the model intact and the answer came back unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from common.preprocessing import decode_and_resize

TEMPERATURE = 1.0
THRESHOLD = 0.5


def score_of_pixels(pixels: np.ndarray) -> float:
    brightness = pixels.astype(np.float64).mean() / 255.0
    return 1.0 / (1.0 + math.exp(-(brightness - 0.5) * 10.0 / TEMPERATURE))


def expected_score(image_bytes: bytes) -> float:
    return score_of_pixels(decode_and_resize(image_bytes))
