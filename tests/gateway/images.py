"""Small image files built with Pillow for the gateway tests (every format and mode the API accepts)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def gradient(width: int = 320, height: int = 240) -> Image.Image:
    x = np.linspace(0, 255, width)[np.newaxis, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, np.newaxis].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def solid(value: int, size: int = 64) -> bytes:
    """A flat grey PNG: the fake model's score is its brightness."""
    return encode(Image.new("RGB", (size, size), (value, value, value)), "PNG")


def two_halves_with_exif_orientation(orientation: int) -> bytes:
    """Top half white, bottom half black, stored with an EXIF orientation tag."""
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("P", (80, 80), color) for color in (10, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with one tiny data chunk: a decompression bomb's
    shape, refused from the header before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def every_accepted_kind() -> dict[str, bytes]:
    """name -> file bytes: the formats and modes the gateway must turn into the canonical RGB 256x256."""
    picture = gradient()
    sixteen_bit = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    rgba = picture.convert("RGBA")
    rgba.putalpha(128)
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return {
        "jpeg": encode(picture, "JPEG", quality=90),
        "png": encode(picture, "PNG"),
        "webp": encode(picture, "WEBP", quality=90),
        "bmp": encode(picture, "BMP"),
        "gif": animated_gif(),
        "tiff": encode(picture, "TIFF"),
        "jpeg-cmyk": encode(picture.convert("CMYK"), "JPEG"),
        "jpeg-grey": encode(picture.convert("L"), "JPEG"),
        "png-16-bit": encode(sixteen_bit, "PNG"),
        "png-alpha": encode(rgba, "PNG"),
        "png-palette-transparency": encode(palette, "PNG"),
        "tiff-cmyk": encode(picture.convert("CMYK"), "TIFF"),
        "jpeg-exif-rotated": two_halves_with_exif_orientation(6),
    }
