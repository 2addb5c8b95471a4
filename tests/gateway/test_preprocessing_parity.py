"""Contract 1: for the real upload samples, the gateway's tensor equals the training pipeline's, bit for bit.

The gateway side is what a request goes through (multipart read + the decoding thread pool); the
training side is training.pipeline.make_dataset in evaluation mode (no augmentation).
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest

from common.preprocessing import IMAGE_SIZE
from gateway.settings import Settings
from gateway.uploads import ImageDecoder, read_multipart_files

pytestmark = pytest.mark.model


def gateway_tensor(image_bytes: bytes, filename: str, decoder: ImageDecoder) -> np.ndarray:
    boundary = "parity"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()
        + image_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def stream():  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async def run() -> np.ndarray:
        settings = Settings()
        (file,) = await read_multipart_files(
            {"content-type": f"multipart/form-data; boundary={boundary}"},
            stream(),
            field_names=("file",),
            max_files=1,
            max_file_bytes=settings.max_upload_bytes,
            max_body_bytes=settings.max_batch_bytes,
        )
        return (await decoder.decode(bytes(file.data))).pixels

    return asyncio.run(run())


def test_gateway_tensor_equals_training_tensor(uploads_dir: Path) -> None:
    from training.data import Example
    from training.pipeline import make_dataset

    with (uploads_dir / "manifest.csv").open(newline="") as manifest:
        rows = list(csv.DictReader(manifest))
    examples = [
        Example(path=uploads_dir / row["file"], label=int(row["label"] == "ai"), source=row["origin"])
        for row in rows
    ]
    dataset = make_dataset(examples, training=False, batch_size=8, cache=False)
    training_tensors = np.concatenate([batch_images.numpy() for batch_images, _ in dataset])
    assert training_tensors.shape == (len(rows), IMAGE_SIZE, IMAGE_SIZE, 3)

    decoder = ImageDecoder(
        threads=2, max_pixels=Settings().max_pixels, memory_budget_bytes=Settings().decode_memory_budget_bytes
    )
    try:
        for row, training_tensor in zip(rows, training_tensors, strict=True):
            data = (uploads_dir / row["file"]).read_bytes()
            gateway = gateway_tensor(data, row["file"], decoder)
            assert gateway.dtype == training_tensor.dtype == np.uint8
            assert np.array_equal(gateway, training_tensor), row["file"]
    finally:
        decoder.close()
