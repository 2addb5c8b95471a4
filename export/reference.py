"""Real images and the Keras model's answers on them: what every export is compared against.

The images are the run's own validation split (never test: the test split chooses nothing),
through the shared preprocessing. For the bytes signature the same files are sent encoded: the
original JPEGs, plus a few re-encoded as PNG, BMP and GIF so every in-graph decoder runs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.preprocessing import decode_and_resize, open_image, sniff_format

REENCODED_FORMATS = ("PNG", "BMP", "GIF")
# Re-encoded samples are shrunk to this longest side: enough to exercise the decoders, small
# enough for the warmup file (BMP is uncompressed).
REENCODED_LONGEST_SIDE = 160


@dataclass(frozen=True)
class EncodedFile:
    name: str
    image_format: str  # as common.preprocessing.sniff_format names it
    content: bytes
    reencoded: bool = False  # False: the data set's file as it is


@dataclass
class ReferenceSet:
    """uint8 images and encoded files, with the Keras logits on their shared-preprocessing pixels."""

    images: np.ndarray  # uint8 [N, 256, 256, 3]
    files: list[EncodedFile]
    file_images: np.ndarray  # decode_and_resize(file.content) for each file
    image_logits: np.ndarray | None = None  # float64 [N]
    file_logits: np.ndarray | None = None

    def probabilities(self, logits: np.ndarray, temperature: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))


def reencode(content: bytes, image_format: str, longest_side: int = REENCODED_LONGEST_SIDE) -> bytes:
    image = open_image(content)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def encoded_samples(
    paths: Sequence[Path], originals: int, reencoded_per_format: int = 1
) -> list[EncodedFile]:
    """The first `originals` files as they are, then re-encodings of the next ones, in each of
    REENCODED_FORMATS."""
    files = []
    for path in paths[:originals]:
        content = path.read_bytes()
        files.append(EncodedFile(path.name, sniff_format(content) or "unknown", content))
    spare = list(paths[originals:]) or list(paths)
    for index, image_format in enumerate(
        image_format for image_format in REENCODED_FORMATS for _ in range(reencoded_per_format)
    ):
        path = spare[index % len(spare)]
        files.append(
            EncodedFile(
                f"{path.stem}.{image_format.lower()}",
                image_format,
                reencode(path.read_bytes(), image_format),
                reencoded=True,
            )
        )
    return files


def build_reference_set(paths: Sequence[Path], encoded_originals: int = 8) -> ReferenceSet:
    images = np.stack([decode_and_resize(path.read_bytes()) for path in paths])
    files = encoded_samples(paths, min(encoded_originals, len(paths)))
    file_images = np.stack([decode_and_resize(file.content) for file in files])
    return ReferenceSet(images=images, files=files, file_images=file_images)


def keras_logits(classifier: object, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The Keras classifier's pre-sigmoid logits (float64 [N]): the ground truth of every comparison."""
    from export.graph import keras_logit_network

    network = keras_logit_network(classifier)
    batches = [
        np.asarray(network(images[start : start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches).astype(np.float64).reshape(-1)


def with_keras_logits(reference: ReferenceSet, classifier: object) -> ReferenceSet:
    reference.image_logits = keras_logits(classifier, reference.images)
    reference.file_logits = keras_logits(classifier, reference.file_images)
    return reference
