"""The in-graph decoder of the bytes signature against the shared preprocessing.

Tolerance: per image, max |pixel difference| <= 1 grey level and mean <= 0.25. Both crop the
same centred square and resize with an antialiased bilinear filter; the remaining difference
is rounding (Pillow resizes in fixed point, TensorFlow in float). Measured on the 41 files of
../shared/data/uploads: max 1, mean 0.06 to 0.17 (docs/export.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.preprocessing import decode_and_resize

pytestmark = pytest.mark.model

MAX_PIXEL_DIFFERENCE = 1
MAX_MEAN_PIXEL_DIFFERENCE = 0.25


@pytest.fixture(scope="module")
def decode():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from export.graph import decode_image_bytes

    decode_one = tf.function(decode_image_bytes, input_signature=[tf.TensorSpec([], tf.string)])
    return lambda content: decode_one(tf.constant(content)).numpy()


def difference(decode, content: bytes) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    in_graph = decode(content).astype(np.int16)
    shared = decode_and_resize(content).astype(np.int16)
    assert in_graph.shape == shared.shape == (224, 224, 3)
    gap = np.abs(in_graph - shared)
    return int(gap.max()), float(gap.mean())


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_upload_files_decode_like_the_shared_preprocessing(decode, uploads_dir: Path) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(
        path for path in uploads_dir.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
    )
    assert {path.suffix.lower() for path in paths} >= {".jpg", ".jpeg", ".png"}
    worst = {}
    for path in paths:
        worst[path.name] = difference(decode, path.read_bytes())
    maximum = max(gap for gap, _ in worst.values())
    mean = max(average for _, average in worst.values())
    print(f"{len(paths)} uploads: max pixel difference {maximum}, worst mean {mean:.3f}")
    assert maximum <= MAX_PIXEL_DIFFERENCE, worst
    assert mean <= MAX_MEAN_PIXEL_DIFFERENCE, worst


@pytest.mark.parametrize(
    ("image_format", "mode", "size"),
    [
        ("BMP", "RGB", (517, 300)),  # landscape: crop the width
        ("GIF", "RGB", (260, 390)),  # portrait: crop the height; palette-quantized
        ("PNG", "RGBA", (300, 300)),  # transparency composited over white
        ("PNG", "L", (640, 480)),  # greyscale
        ("JPEG", "L", (400, 500)),  # greyscale JPEG
        ("PNG", "RGB", (150, 120)),  # smaller than 224: upscaled
    ],
)
def test_generated_files_of_every_format_decode_like_the_shared_preprocessing(  # type: ignore[no-untyped-def]
    decode, uploads_dir: Path, image_format: str, mode: str, size: tuple[int, int]
) -> None:
    with Image.open(uploads_dir / "real_01.jpeg") as photo:
        image = photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
        image.putalpha(Image.fromarray(alpha, mode="L"))
    elif mode == "L":
        image = image.convert("L")
    content = encode(image, image_format)
    gap, mean = difference(decode, content)
    assert gap <= MAX_PIXEL_DIFFERENCE and mean <= MAX_MEAN_PIXEL_DIFFERENCE, (gap, mean)


def test_images_over_the_pixel_limit_and_garbage_are_invalid_arguments(uploads_dir: Path) -> None:
    import tensorflow as tf

    from export.graph import decode_image_bytes, header_pixel_count

    jpeg = (uploads_dir / "real_01.jpeg").read_bytes()  # 500 x 334
    bmp = encode(Image.new("RGB", (30, 20)), "BMP")
    gif = encode(Image.new("RGB", (31, 21)), "GIF")
    png = encode(Image.new("RGB", (32, 22)), "PNG")
    counts = [int(header_pixel_count(tf.constant(content))) for content in (jpeg, bmp, gif, png)]
    assert counts == [500 * 334, 30 * 20, 31 * 21, 32 * 22]
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 100000 pixels"):
        decode_image_bytes(tf.constant(jpeg), max_pixels=100_000)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image_bytes(tf.constant(b"this is not an image"))
