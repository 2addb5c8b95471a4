"""The raw ceiling: an exported SavedModel called in process, no server, no HTTP, no decoding.

    python -m loadtest.raw_model models/ai_detector/1 --batch-sizes 1 8 16 32 --seconds 4

Loads the version folder with tf.saved_model.load, calls its `serving_default` signature on the
real uploads (decoded once, beforehand, with the shared preprocessing) at each batch size for
about `--seconds` seconds in `--rounds` rounds, and prints JSON: images per second per batch
size (median of the rounds) with this process's CPU time per image (core-ms, all threads), the
best of them, and the CPU other processes used meanwhile.
The benchmark runs this in a child process, so TensorFlow's memory and threads are gone before
the servers are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from common import signatures
from common.machine import OtherLoadMonitor
from loadtest.samples import load_uploads, model_inputs
from loadtest.settings import UPLOADS_DIRECTORY

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)


def measure(
    version_dir: Path, images: np.ndarray, batch_sizes: list[int], seconds: float, rounds: int
) -> dict[str, Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures[signatures.SERVING_SIGNATURE]
    monitor = OtherLoadMonitor().start()
    process = psutil.Process()
    per_batch_size: dict[int, dict[str, Any]] = {}
    for batch_size in batch_sizes:
        batch = tf.constant(np.stack([images[index % len(images)] for index in range(batch_size)]))
        for _ in range(2):  # the first calls of a new shape trace and allocate
            serve(**{signatures.IMAGE_INPUT: batch})
        rates = []
        timed_images = 0
        cpu_before = process.cpu_times()
        for _ in range(rounds):
            calls = 0
            started = time.perf_counter()
            while True:
                serve(**{signatures.IMAGE_INPUT: batch})
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds / rounds:
                    break
            rates.append(calls * batch_size / elapsed)
            timed_images += calls * batch_size
        cpu_after = process.cpu_times()
        cpu_seconds = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        per_batch_size[batch_size] = {
            "images_per_second": statistics.median(rates),
            "rounds": [round(rate, 2) for rate in rates],
            "milliseconds_per_batch": 1000 * batch_size / statistics.median(rates),
            "cpu_milliseconds_per_image": 1000 * cpu_seconds / timed_images,
        }
    best_batch_size = max(per_batch_size, key=lambda size: per_batch_size[size]["images_per_second"])
    return {
        "version_dir": str(version_dir),
        "batch_sizes": per_batch_size,
        "best_batch_size": best_batch_size,
        "best_images_per_second": per_batch_size[best_batch_size]["images_per_second"],
        "other_load": monitor.stop().to_dict(),
        "tensorflow": tf.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.raw_model", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("version_dir", type=Path, help="a SavedModel version folder (models/<name>/<n>)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--seconds", type=float, default=4.0, help="time per batch size, all rounds together")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=Path, default=UPLOADS_DIRECTORY)
    arguments = parser.parse_args(argv)
    images = model_inputs(load_uploads(arguments.uploads))
    result = measure(
        arguments.version_dir, images, arguments.batch_sizes, arguments.seconds, arguments.rounds
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
