"""The raw ceilings: an exported SavedModel called in process, no server, no HTTP.

    python -m loadtest.benchmark raw models/ai_detector/1 --batch-sizes 1,8,16,32 --seconds 4

Loads the version folder with tf.saved_model.load and calls its `serving_default` signature on the
real uploads at each batch size, and prints JSON with two ceilings:

- the model alone: the uploads decoded once, beforehand, with the shared preprocessing; about
  `--seconds` seconds in `--rounds` rounds; images per second per batch size (median of the
  rounds) with this process's CPU time per image (core-ms, all threads);
- decode + canonical normalization + model (`with_decoding`), what the stack does minus serving:
  each batch's original files decoded and normalized (`common.preprocessing.decode_and_resize`,
  the gateway's own) on two threads while the model runs the previous batch, for about
  `--seconds` seconds per batch size;

each with its best batch size, and the CPU other processes used meanwhile.
The benchmark runs this in a child process, so TensorFlow's memory and threads are gone before
the servers are measured.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from common import signatures
from common.machine import OtherLoadMonitor
from common.preprocessing import decode_and_resize

DECODE_THREADS = 2  # as the gateway's decode_threads

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)


def decode_and_model(
    signature: Any, files: Sequence[bytes], batch_sizes: Sequence[int], seconds: float
) -> dict[str, Any]:
    """Images/s and CPU per image of decode + canonical normalization + model in this process, per
    batch size: the next batch decodes on DECODE_THREADS threads while the model runs this one."""
    import tensorflow as tf

    def run(batch: np.ndarray) -> None:
        np.asarray(signature(**{signatures.IMAGE_INPUT: tf.constant(batch)})[signatures.OUTPUT_PROBABILITY])

    per_batch_size: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for batch_size in batch_sizes:
            files_in_turn = itertools.cycle(files)
            pending = [pool.submit(decode_and_resize, next(files_in_turn)) for _ in range(batch_size)]
            images, started, cpu_started = -batch_size, 0.0, 0.0  # the first batch warms up, untimed
            while images < 0 or time.perf_counter() - started < seconds:
                batch = np.stack([future.result() for future in pending])
                pending = [pool.submit(decode_and_resize, next(files_in_turn)) for _ in range(batch_size)]
                run(batch)
                if images < 0:
                    started, cpu_started = time.perf_counter(), time.process_time()
                images += batch_size
            elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            wait(pending)
            per_batch_size[str(batch_size)] = {
                "images_per_second": round(images / elapsed, 2),
                "cpu_milliseconds_per_image": round(1000.0 * cpu_seconds / images, 3),
            }
    best = max(per_batch_size, key=lambda size: per_batch_size[size]["images_per_second"])
    return {
        "batch_sizes": per_batch_size,
        "best_batch_size": int(best),
        "best_images_per_second": per_batch_size[best]["images_per_second"],
        "decode_threads": DECODE_THREADS,
    }


def measure(
    version_dir: Path,
    images: np.ndarray,
    batch_sizes: list[int],
    seconds: float,
    rounds: int,
    files: Sequence[bytes] = (),
) -> dict[str, Any]:
    import tensorflow as tf

    from export.measure import load_signatures, speed

    _loaded, loaded_signatures = load_signatures(version_dir)
    monitor = OtherLoadMonitor().start()
    per_batch_size = speed(
        loaded_signatures[signatures.SERVING_SIGNATURE], images, batch_sizes, rounds, seconds / rounds
    )
    best_batch_size = max(per_batch_size, key=lambda size: per_batch_size[size]["images_per_second"])
    with_decoding = (
        decode_and_model(loaded_signatures[signatures.SERVING_SIGNATURE], files, batch_sizes, seconds)
        if files
        else None
    )
    return {
        "version_dir": str(version_dir),
        "batch_sizes": per_batch_size,
        "best_batch_size": int(best_batch_size),
        "best_images_per_second": per_batch_size[best_batch_size]["images_per_second"],
        "with_decoding": with_decoding,
        "other_load": monitor.stop().to_dict(),
        "tensorflow": tf.__version__,
    }
