"""Measure a written SavedModel the way it is served: speed and agreement with the Keras model.

Everything goes through tf.saved_model.load of the folder on disk, so what is measured is the
saved graph (with the graph optimizer run on load, as TF Serving does), not the Python objects
that wrote it. Timings are medians of several rounds because the CPU is shared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from common import signatures

Signature = Callable[..., Mapping[str, tf.Tensor]]
# The threshold is itself a validation score (the ROC point with the best balanced accuracy), so
# one image sits exactly on it, where float32 rounding alone decides the label. Images this close
# to the threshold are counted apart, not as label flips (fp32 exports differ by up to ~1e-6).
ON_THRESHOLD = 1e-5


def load_signatures(saved_model_dir: Path) -> tuple[Any, dict[str, Signature]]:
    """(the loaded object, which must be kept alive, and its signatures by name)."""
    loaded = tf.saved_model.load(str(saved_model_dir))
    return loaded, dict(loaded.signatures)


def run_images(signature: Signature, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Outputs of the uint8 signature over `images` in batches, concatenated."""
    batches: list[Mapping[str, Any]] = [
        signature(**{signatures.IMAGE_INPUT: tf.constant(images[start : start + batch_size])})
        for start in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([np.asarray(batch[name]) for batch in batches]) for name in batches[0]}


def run_image_bytes(
    signature: Signature, files: Sequence[bytes], batch_size: int = 8
) -> dict[str, np.ndarray]:
    batches: list[Mapping[str, tf.Tensor]] = [
        signature(**{signatures.BYTES_INPUT: tf.constant(list(files[start : start + batch_size]), tf.string)})
        for start in range(0, len(files), batch_size)
    ]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in batches[0]}


def agreement(
    probability: np.ndarray,
    reference_probability: np.ndarray,
    threshold: float,
    logit: np.ndarray | None = None,
    reference_logit: np.ndarray | None = None,
) -> dict[str, Any]:
    """How far `probability` is from the Keras reference, and how many labels at `threshold` differ
    (among images not within ON_THRESHOLD of the threshold)."""
    probability = np.asarray(probability, dtype=np.float64).reshape(-1)
    reference_probability = np.asarray(reference_probability, dtype=np.float64).reshape(-1)
    if probability.shape != reference_probability.shape:
        raise ValueError(f"{probability.shape} outputs for {reference_probability.shape} references")
    difference = np.abs(probability - reference_probability)
    flipped = (probability >= threshold) != (reference_probability >= threshold)
    on_threshold = np.abs(reference_probability - threshold) <= ON_THRESHOLD
    result: dict[str, Any] = {
        "count": int(probability.size),
        "max_abs_probability_difference": float(difference.max(initial=0.0)),
        "mean_abs_probability_difference": float(difference.mean()) if difference.size else 0.0,
        "label_flips": int(np.sum(flipped & ~on_threshold)),
        "on_threshold": int(np.sum(on_threshold)),
    }
    if logit is not None and reference_logit is not None:
        logit_difference = np.abs(
            np.asarray(logit, np.float64).reshape(-1) - np.asarray(reference_logit).reshape(-1)
        )
        result["max_abs_logit_difference"] = float(logit_difference.max(initial=0.0))
    return result


def time_calls(call: Callable[[], Any], rounds: int, calls_per_round: int) -> list[float]:
    """Seconds per call, one value per round (after one warm-up call)."""
    call()
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls_per_round):
            call()
        per_round.append((time.perf_counter() - started) / calls_per_round)
    return per_round


def speed(
    signature: Signature,
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 32),
    rounds: int = 5,
    seconds_per_round: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """The one raw-SavedModel timing loop (export's variant choice, the benchmark's raw ceiling):
    {batch size: {ms_per_batch (median of rounds), images_per_second, spread, round_rates,
    cpu_milliseconds_per_image}} for the uint8 signature.

    `images` are tiled to fill each batch; each round runs about `seconds_per_round`. The CPU time
    is this process's, all threads (`time.process_time`), over the timed calls and one warm-up.
    """
    results: dict[str, dict[str, Any]] = {}
    for batch_size in batch_sizes:
        repeats = -(-batch_size // len(images))
        batch = tf.constant(np.concatenate([images] * repeats)[:batch_size])

        def call(batch: tf.Tensor = batch) -> None:
            np.asarray(signature(**{signatures.IMAGE_INPUT: batch})[signatures.OUTPUT_PROBABILITY])

        call()  # the first call of a new shape traces and allocates
        first = time_calls(call, rounds=1, calls_per_round=1)[0]
        calls_per_round = max(1, round(seconds_per_round / max(first, 1e-4)))
        cpu_started = time.process_time()
        seconds = time_calls(call, rounds=rounds, calls_per_round=calls_per_round)
        cpu_seconds = time.process_time() - cpu_started
        median = statistics.median(seconds)
        results[str(batch_size)] = {
            "ms_per_batch": round(median * 1000.0, 2),
            "images_per_second": round(batch_size / median, 2),
            "spread": round((max(seconds) - min(seconds)) / median, 3),
            "round_rates": [round(batch_size / value, 2) for value in seconds],
            "cpu_milliseconds_per_image": round(
                1000.0 * cpu_seconds / ((1 + rounds * calls_per_round) * batch_size), 3
            ),
        }
    return results
