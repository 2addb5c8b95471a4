"""Decode-and-resize, defined once (ARCHITECTURE.md contract 1).

Training's input pipeline and the gateway both call :func:`decode_and_resize`, so the
same file always becomes the same 224x224 uint8 RGB tensor. Numeric preprocessing
(casting, the backbone's normalization) is not done here: it lives in the exported graph.

Geometry: the largest centred square is cut out of the image and resized to 224x224
with Pillow's bilinear filter (antialiased when shrinking). Cropping to a square keeps
the aspect ratio out of the model's input, which the data README warns is a label leak.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 224
DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; larger images are refused before full decoding

# The formats we accept, keyed by Pillow's format name.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class ImageInputError(ValueError):
    """Base class of everything wrong with an uploaded image. `str(error)` is for people."""


class NotAnImageError(ImageInputError):
    """The bytes are not a (readable) image of any format we know."""


class UnsupportedFormatError(ImageInputError):
    """The bytes are an image, but of a format we do not accept."""


class CorruptImageError(ImageInputError):
    """The bytes start like a supported image but cannot be decoded."""


class ImageTooLargeError(ImageInputError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


@dataclass(frozen=True)
class ImageInfo:
    """What we learned about an upload while decoding it."""

    format: str
    width: int
    height: int
    mode: str


# Magic numbers of the formats we know, supported or not: enough to tell
# "not an image" (400) from "an image we do not take" (415) without trusting
# the file name or content type.
_MAGIC_NUMBERS: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),  # b"RIFF" at 0
    (b"BM", 0, "BMP"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG2000"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"qoif", 0, "QOI"),
    (b"\xff\x0a", 0, "JPEGXL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEGXL"),
    (b"%PDF", 0, "PDF"),
)


def sniff_format(image_bytes: bytes) -> str | None:
    """The image format the bytes really are, from their magic number, or None."""
    for magic, offset, name in _MAGIC_NUMBERS:
        if image_bytes[offset : offset + len(magic)] == magic:
            if name == "WEBP" and not image_bytes.startswith(b"RIFF"):
                continue
            return name
    return None


def open_image(image_bytes: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an upload as an RGB image, refusing bad input with a typed error.

    The pixel limit is checked from the header, before the pixel data is decoded.
    """
    if not image_bytes:
        raise NotAnImageError("the file is empty")
    image_format = sniff_format(image_bytes)
    if image_format is None:
        raise NotAnImageError("the file is not an image (its content matches no known image format)")
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(
            f"{image_format} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning is replaced by our explicit limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(image_bytes), formats=[image_format])
            width, height = image.size
            if width <= 0 or height <= 0:
                raise CorruptImageError(f"the {image_format} image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height:,} pixels; "
                    f"the limit is {max_pixels:,} pixels"
                )
            image.load()
            # EXIF orientation: photos from phones are stored sideways with a rotation tag.
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as error:
        # Pillow's own guard fires inside Image.open for headers claiming > 2 x MAX_IMAGE_PIXELS.
        raise ImageTooLargeError(f"the image has too many pixels to decode safely ({error})") from error
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
    ) as error:
        # Pillow reports truncated or malformed data with these; the bytes claimed to be an image.
        raise CorruptImageError(f"the {image_format} image is corrupt or truncated ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited over white, 16-bit scaled down, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the used range of the type to 0..255.
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            scale = 1.0
        grey = np.clip(np.round(array / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_to_model_input(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre square crop, bilinear resize to `size`x`size`: uint8 array [size, size, 3]."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    top, left, side = square_crop_box(*image.size)
    # Crop first, then resize: resizing with `box=` would blend in pixels from outside the square.
    square = image.crop((left, top, left + side, top + side)) if side != max(image.size) else image
    resized = square.resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def square_crop_box(width: int, height: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square crop: the in-graph decoder uses the same box."""
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side


def decode_and_resize(image_bytes: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> the model's uint8 [224, 224, 3] RGB input. The one shared entry point."""
    return resize_to_model_input(open_image(image_bytes, max_pixels=max_pixels))


def describe_image(image_bytes: bytes) -> ImageInfo:
    """Format and size from the header only (no pixel decoding), for reports and limits."""
    image_format = sniff_format(image_bytes) or "unknown"
    with Image.open(io.BytesIO(image_bytes)) as image:
        return ImageInfo(format=image_format, width=image.size[0], height=image.size[1], mode=image.mode)
