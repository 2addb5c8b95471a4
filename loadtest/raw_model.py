"""The raw ceiling: an exported SavedModel called in process, no server, no HTTP, no decoding.

    python -m loadtest.benchmark raw models/ai_detector/1 --batch-sizes 1,8,16,32 --seconds 4

Loads the version folder with tf.saved_model.load, calls its `serving_default` signature on the
real uploads (decoded once, beforehand, with the shared preprocessing) at each batch size for
about `--seconds` seconds in `--rounds` rounds, and prints JSON: images per second per batch
size (median of the rounds) with this process's CPU time per image (core-ms, all threads), the
best of them, and the CPU other processes used meanwhile.
The benchmark runs this in a child process, so TensorFlow's memory and threads are gone before
the servers are measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common import signatures
from common.machine import OtherLoadMonitor

DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)


def measure(
    version_dir: Path, images: np.ndarray, batch_sizes: list[int], seconds: float, rounds: int
) -> dict[str, Any]:
    import tensorflow as tf

    from export.measure import load_signatures, speed

    _loaded, loaded_signatures = load_signatures(version_dir)
    monitor = OtherLoadMonitor().start()
    per_batch_size = speed(
        loaded_signatures[signatures.SERVING_SIGNATURE], images, batch_sizes, rounds, seconds / rounds
    )
    best_batch_size = max(per_batch_size, key=lambda size: per_batch_size[size]["images_per_second"])
    return {
        "version_dir": str(version_dir),
        "batch_sizes": per_batch_size,
        "best_batch_size": int(best_batch_size),
        "best_images_per_second": per_batch_size[best_batch_size]["images_per_second"],
        "other_load": monitor.stop().to_dict(),
        "tensorflow": tf.__version__,
    }
