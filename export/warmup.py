"""`assets.extra/tf_serving_warmup_requests`: PredictionLog records TF Serving replays on load.

TF Serving runs every record before it marks a version AVAILABLE, so the first real requests
do not pay for graph optimization and oneDNN kernel creation. Each batch size is its own set of
kernels, so there is one uint8 record per batch size the batching config allows (server-side
batching pads every batch to one of them), plus bytes records: one per image format at batch 1
and the original JPEGs at each allowed batch size. Inputs are real images, not zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import signatures
from common.repository import DEFAULT_BATCHING_FILE, SERVING_FOLDER
from export.reference import EncodedFile

# Used when there is no batching config: batch 1 (no batching) and the sizes a typical
# allowed_batch_sizes list ends in.
DEFAULT_BATCH_SIZES = (1, 8, 32)
# The CPU batching config (the one `make run` and the CPU image use) comes first: the export
# variants are CPU graphs, and the GPU config's sizes (up to 64) would triple the warmup file.
DEFAULT_BATCHING_CONFIGS = (DEFAULT_BATCHING_FILE, SERVING_FOLDER / "batching.config")


def batch_sizes_from_batching_config(path: Path) -> list[int] | None:
    """`allowed_batch_sizes` of a TF Serving batching config (and 1), else 1..max_batch_size's
    power-of-two sizes, else None (no such file, or neither field set). Parsed as the server parses
    it (serving.batching.parse_batching_parameters)."""
    from serving.batching import parse_batching_parameters

    path = Path(path)
    if not path.is_file():
        return None
    parameters = parse_batching_parameters(path.read_text())
    if parameters.allowed_batch_sizes:
        return sorted({1, *(int(size) for size in parameters.allowed_batch_sizes)})
    if parameters.HasField("max_batch_size"):
        largest = int(parameters.max_batch_size.value)
        return sorted(
            {1, largest, *(2**power for power in range(largest.bit_length()) if 2**power <= largest)}
        )
    return None


def default_batch_sizes() -> list[int]:
    """Batch sizes of the first of DEFAULT_BATCHING_CONFIGS that exists, else DEFAULT_BATCH_SIZES."""
    for path in DEFAULT_BATCHING_CONFIGS:
        sizes = batch_sizes_from_batching_config(path)
        if sizes:
            return sizes
    return list(DEFAULT_BATCH_SIZES)


def warmup_records(
    model_name: str, images: np.ndarray, files: Sequence[EncodedFile], batch_sizes: Iterable[int]
) -> list[object]:
    """PredictionLog records for both signatures at every batch size."""
    from tensorflow_serving.apis import prediction_log_pb2

    from common.tensors import predict_request

    def record(signature_name: str, input_name: str, tensor: np.ndarray) -> object:
        request = predict_request(model_name, {input_name: tensor}, signature_name)
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    def cycle(items: Sequence[Any], count: int) -> list[Any]:
        return [items[index % len(items)] for index in range(count)]

    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"warmup batch sizes must be positive, got {sizes}")
    originals = [file.content for file in files if not file.reencoded] or [files[0].content]
    records = []
    for size in sizes:
        batch = np.stack(cycle(list(images), size)).astype(np.uint8)
        records.append(record(signatures.SERVING_SIGNATURE, signatures.IMAGE_INPUT, batch))
    for file in files:
        if file.reencoded:
            records.append(
                record(
                    signatures.BYTES_SIGNATURE, signatures.BYTES_INPUT, np.array([file.content], dtype=object)
                )
            )
    for size in sizes:
        records.append(
            record(
                signatures.BYTES_SIGNATURE,
                signatures.BYTES_INPUT,
                np.array(cycle(originals, size), dtype=object),
            )
        )
    return records


def write_warmup(saved_model_dir: Path, records: Iterable[object]) -> Path:
    import tensorflow as tf

    path = Path(saved_model_dir) / signatures.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())  # type: ignore[attr-defined]
    return path


def read_warmup(path: Path) -> list[object]:
    """Parse every record as a PredictionLog (raises on a record that is not one)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for serialized in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(serialized.numpy())
        records.append(log)
    return records
