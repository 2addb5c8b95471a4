"""The canonical normalization, defined once (ARCHITECTURE.md contract 1).

Training's input pipeline, the gateway and (within a stated tolerance) the exported graph's bytes
decoder all turn an upload into the same *canonical image*, the way the shared data set was made:

1. decode (JPEGs with DCT scaling, Pillow's ``draft``, to the smallest scale that still leaves
   the longest side at least ``DRAFT_MARGIN`` times the data set's size), EXIF orientation applied;
2. RGB, alpha composited over white, 16-bit and float data scaled to 8 bits;
3. the longest side scaled down to at most ``DATASET_MAX_SIDE`` (384) pixels with Lanczos, as the
   data set's images were (the data set's own files are already that size: step 3 leaves them as
   they are);
4. saved as JPEG quality 90 and decoded again (Pillow's defaults, 4:2:0 chroma), as every image of
   the data set was saved: the model never saw an image without that compression, and an upload
   without it scores differently (mean |logit change| 0.47 on the uploads that are originals of
   data set images; with this step their canonical images equal the data set's, docs/model-report.md).
   A file that is already in the data set's form (``in_dataset_form``: a JPEG with the quality-90
   tables, 4:2:0, longest side <= 384, nothing to rotate), every data set image among them, is not
   compressed a second time;
5. the centred ``IMAGE_SIZE`` x ``IMAGE_SIZE`` window at that resolution, no further resampling; a
   side shorter than ``IMAGE_SIZE`` is filled by mirroring the image at its edge.

Steps 3 and 4 are computed only over the JPEG blocks around the window (``resize_to_model_input``):
the same pixels as the whole image's, up to the rounding of Pillow's box scaling.

Step 5 gives every image one fixed shape, so TF Serving can batch requests, without a second
resize that would blur the pixel statistics a detector of generated images relies on, and without
the aspect ratio (a label leak, says the data README). What the network needs beyond the canonical
image (crops, flips, scaling to its input range) lives in the exported graph.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

IMAGE_SIZE = 256  # side of the canonical image the gateway sends and the model receives
DATASET_MAX_SIDE = 384  # the shared data set's normalization: longest side scaled down to this
# JPEG DCT scaling decodes at 1/2, 1/4 or 1/8 size for a fraction of the cost; it is used only
# while the decoded image keeps this many times the pixels per side that the Lanczos step needs.
DRAFT_MARGIN = 3
# The data set saved every image as JPEG with this quality (Pillow's defaults otherwise: 4:2:0 chroma).
DATASET_JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
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
    return load_rgb(open_header(image_bytes, max_pixels))


def open_header(image_bytes: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The first half of `open_image`: format, size and pixel limit from the header (JPEG DCT
    scaling chosen); no pixel data decoded yet, so `decode_cost_bytes` can be asked first."""
    if not image_bytes:
        raise NotAnImageError("the file is empty")
    image_format = sniff_format(image_bytes)
    if image_format is None:
        raise NotAnImageError("the file is not an image (its content matches no known image format)")
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(
            f"{image_format} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}"
        )
    with pillow_errors(image_format):
        image: Image.Image = Image.open(io.BytesIO(image_bytes), formats=[image_format])
        width, height = image.size
        if width <= 0 or height <= 0:
            raise CorruptImageError(f"the {image_format} image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {width}x{height} = {width * height:,} pixels; "
                f"the limit is {max_pixels:,} pixels"
            )
        if image_format == "JPEG":
            draft_for_canonical_size(image)
        return image


def load_rgb(image: Image.Image) -> Image.Image:
    """The second half of `open_image`: decode the pixels of an image from `open_header`, apply
    its EXIF orientation, and make it RGB (reduced first where that saves memory)."""
    with pillow_errors(image.format or "image"):
        image.load()
        # EXIF orientation: photos from phones are stored sideways with a rotation tag.
        image = ImageOps.exif_transpose(image)
        return to_rgb(reduce_before_converting(image))


_PILLOW_DATA_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError)


@contextmanager
def pillow_errors(image_format: str) -> Iterator[None]:
    """Pillow's failures while opening or decoding an upload, as typed ImageInputErrors; Pillow's
    own bomb warning is silenced (the explicit pixel limit replaces it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageInputError:
        raise
    except Image.DecompressionBombError as error:
        # Pillow's own guard fires inside Image.open for headers claiming > 2 x MAX_IMAGE_PIXELS.
        raise ImageTooLargeError(f"the image has too many pixels to decode safely ({error})") from error
    except _PILLOW_DATA_ERRORS as error:
        # Pillow reports truncated or malformed data with these; the bytes claimed to be an image.
        raise CorruptImageError(f"the {image_format} image is corrupt or truncated ({error})") from error


# Bytes per pixel of a decoded image in Pillow's memory, by mode: one byte for L, P and 1, two for
# 16-bit grey; every other mode (RGB included) is stored in 32-bit pixels.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decode_cost_bytes(image: Image.Image) -> int:
    """Peak memory that decoding and converting an image from `open_header` takes, estimated from
    its header: the decoded pixels, and once more for the largest working copy (EXIF rotation, a
    wider mode before the reduction); measured peaks are within this (tests/unit)."""
    width, height = image.size
    decoded = _BYTES_PER_PIXEL.get(image.mode, 4)
    return math.ceil(width * height * (decoded + max(decoded, 4)) * 1.1)


def reduce_before_converting(image: Image.Image) -> Image.Image:
    """A large non-RGB image reduced by the integer factor Lanczos would reduce it by anyway, in
    its own mode, before `to_rgb` makes (float, RGBA, RGB) copies of it at full size. RGB images
    pass as they are: their reduction happens inside the Lanczos step (bit-exact as before)."""
    if image.mode == "RGB":
        return image
    width, height = image.size
    target_width, target_height = dataset_size(width, height)
    factor = (
        max(1, int(width / target_width / REDUCING_GAP)),
        max(1, int(height / target_height / REDUCING_GAP)),
    )
    if factor == (1, 1):
        return image
    if image.mode.startswith("I;16"):
        # Pillow reduces 32-bit integers, not 16-bit ones; back to 16 bits for to_rgb's scale.
        return image.convert("I").reduce(factor).convert("I;16")
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode == "RGB":
            return image
    return image.reduce(factor)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited over white, 16-bit scaled down, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the used range of the type to 0..255.
        array = np.asarray(image, dtype=np.float32)
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


def draft_for_canonical_size(image: Image.Image) -> None:
    """Let a JPEG decode at a reduced DCT scale where the result keeps DRAFT_MARGIN x the needed size."""
    width, height = image.size
    scale = DRAFT_MARGIN * DATASET_MAX_SIDE / max(width, height)
    if scale < 0.5:  # draft cannot reduce by less than 2
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))


def dataset_size(width: int, height: int, max_side: int = DATASET_MAX_SIDE) -> tuple[int, int]:
    """(width, height) after the data set's normalization: longest side scaled down to `max_side`."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


# Pillow first reduces by an integer factor (box filter) while the image stays this many times the
# target size, then applies Lanczos: identical pixels on every upload of ../shared/data/uploads
# (measured 2026-12-01), and a 7000 px image is done in a fraction of the time and memory-time.
REDUCING_GAP = 3.0


def normalize_like_dataset(image: Image.Image) -> Image.Image:
    """An RGB image scaled as the data set's images were: longest side at most 384, Lanczos."""
    size = dataset_size(*image.size)
    if size == image.size:
        return image
    return image.resize(size, resample=Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def centre_window(pixels: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The centred `size` x `size` window of uint8 [H, W, 3]; short sides mirrored at the edges.

    Each round mirrors at most the image's own extent (half before, half after), as the in-graph
    decoder's tf.pad(mode="SYMMETRIC") must, so both give the same pixels for any size.
    """
    while pixels.shape[0] < size or pixels.shape[1] < size:
        missing = [min(max(0, size - extent), extent) for extent in pixels.shape[:2]]
        before = [extent // 2 for extent in missing]
        padding = [(before[0], missing[0] - before[0]), (before[1], missing[1] - before[1]), (0, 0)]
        pixels = np.pad(pixels, padding, mode="symmetric")
    top, left = window_start(pixels.shape[0], size), window_start(pixels.shape[1], size)
    return np.ascontiguousarray(pixels[top : top + size, left : left + size])


def window_start(extent: int, size: int = IMAGE_SIZE) -> int:
    """Where the centred window of `size` starts along a side of `extent` (>= size) pixels."""
    return (extent - size) // 2


def resize_to_model_input(image: Image.Image, size: int = IMAGE_SIZE, *, recompress: bool) -> np.ndarray:
    """Steps 3-5 of the canonical normalization: uint8 [size, size, 3] from a decoded RGB image.

    `recompress` is step 4, the data set's JPEG quality-90 save: False only for an image already in
    the data set's form (`in_dataset_form` of its file), or for training's perturbations of data
    set images, which were measured without it (training/features.py).
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    width, height = dataset_size(*image.size)
    if not recompress or width < size or height < size:  # (a mirrored window needs the whole image)
        scaled = normalize_like_dataset(image)
        if recompress:
            scaled = jpeg_round_trip(scaled)
        return centre_window(np.asarray(scaled, dtype=np.uint8), size)
    # Steps 3-4 computed only over the window's JPEG region (`jpeg_region`): a JPEG block depends on
    # nothing outside it, so the window's pixels are those of the whole image's round trip (bit-exact
    # on 341 images checked), for about 0.8x the work; Pillow's box scaling, computed from another
    # origin, moves 2 of the 41 uploads by <= 3 levels on < 0.2% of values (docs/performance.md).
    left, top = window_start(width, size), window_start(height, size)
    (x0, x1), (y0, y1) = jpeg_region(width, left, size), jpeg_region(height, top, size)
    if (width, height) == image.size:
        region = image.crop((x0, y0, x1, y1))
    else:
        x_scale, y_scale = image.size[0] / width, image.size[1] / height
        box = (x0 * x_scale, y0 * y_scale, x1 * x_scale, y1 * y_scale)
        region = image.resize(
            (x1 - x0, y1 - y0), resample=Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP
        )
    pixels = np.asarray(jpeg_round_trip(region), dtype=np.uint8)
    return np.ascontiguousarray(pixels[top - y0 : top - y0 + size, left - x0 : left - x0 + size])


# JPEG's 4:2:0 minimum coded unit, and how far the decoder's chroma upsampling reaches beyond a pixel.
JPEG_BLOCK = 16
CHROMA_REACH = 2


def jpeg_region(extent: int, start: int, size: int) -> tuple[int, int]:
    """[low, high) along one side of a scaled image: whole JPEG blocks around [start, start + size),
    with room for the chroma upsampling, so that the JPEG round trip of just that region gives the
    window the same pixels as the round trip of the whole image."""
    low = max(0, (start - CHROMA_REACH) // JPEG_BLOCK * JPEG_BLOCK)
    high = -(-(start + size + CHROMA_REACH) // JPEG_BLOCK) * JPEG_BLOCK
    return low, min(extent, high)


def save_like_dataset(image: Image.Image) -> bytes:
    """`image` as the data set saved its images: JPEG quality 90, Pillow's defaults (4:2:0 chroma,
    baseline); TensorFlow's encoder gives the same pixels (export/graph.py)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=DATASET_JPEG_QUALITY)
    return buffer.getvalue()


def jpeg_round_trip(image: Image.Image) -> Image.Image:
    """Step 4: `image` saved as the data set saved its images, and decoded again."""
    with Image.open(io.BytesIO(save_like_dataset(image)), formats=["JPEG"]) as reopened:
        return reopened.convert("RGB")


@functools.cache
def dataset_quantization() -> dict[int, list[int]]:
    """The quantization tables of `save_like_dataset` (what every data set file holds)."""
    with Image.open(io.BytesIO(save_like_dataset(Image.new("RGB", (8, 8))))) as image:
        return {index: list(table) for index, table in image.quantization.items()}  # type: ignore[attr-defined]


def in_dataset_form(header: Image.Image) -> bool:
    """Whether an opened file (`open_header`) is already what the data set's normalization writes:
    an RGB JPEG with the quality-90 tables and 4:2:0 chroma, longest side <= DATASET_MAX_SIDE, no
    EXIF rotation. Such a file skips step 4: saving it again would compress it twice."""
    if header.format != "JPEG" or header.mode != "RGB" or max(header.size) > DATASET_MAX_SIDE:
        return False
    tables = {index: list(table) for index, table in header.quantization.items()}  # type: ignore[attr-defined]
    if tables != dataset_quantization() or JpegImagePlugin.get_sampling(header) != 2:
        return False
    return header.getexif().get(EXIF_ORIENTATION, 1) == 1


def dataset_form_file(image_bytes: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The file as the data set stores its images (steps 1-4: a JPEG quality 90 at most 384 px):
    `decode_and_resize` gives the same canonical image for it as for `image_bytes`, decoding less."""
    header = open_header(image_bytes, max_pixels)
    if in_dataset_form(header):
        return image_bytes
    return save_like_dataset(normalize_like_dataset(load_rgb(header)))


def decode_and_resize(image_bytes: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> the canonical uint8 [256, 256, 3] RGB image. The one shared entry point."""
    header = open_header(image_bytes, max_pixels)
    recompress = not in_dataset_form(header)
    return resize_to_model_input(load_rgb(header), recompress=recompress)
