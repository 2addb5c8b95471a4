"""The shared decode-and-resize: formats, conversions to RGB, limits and typed errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from common import preprocessing
from common.preprocessing import (
    IMAGE_SIZE,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
    decode_and_resize,
    sniff_format,
)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def gradient(width: int = 300, height: int = 200) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[np.newaxis, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, np.newaxis].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format_decodes_to_the_model_input(image_format: str) -> None:
    data = encode(gradient(), image_format)
    assert sniff_format(data) == image_format
    array = decode_and_resize(data)
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert array.dtype == np.uint8
    # A lossless format must keep the gradient's corners: red rises left to right.
    assert int(array[112, 200, 0]) > int(array[112, 20, 0])


def test_same_bytes_give_bit_identical_tensors() -> None:
    data = encode(gradient(), "JPEG", quality=90)
    assert np.array_equal(decode_and_resize(data), decode_and_resize(data))


def jpeg_q90(image: Image.Image) -> np.ndarray:
    """The data set's save, written out here (not through common.preprocessing): JPEG quality 90."""
    return np.asarray(Image.open(io.BytesIO(encode(image, "JPEG", quality=90))).convert("RGB"))


def test_images_at_the_data_sets_size_are_not_resampled() -> None:
    # Longest side <= 384: no filter touches the pixels; they are saved as the data set saved its
    # images (JPEG quality 90) and the canonical image is the centred 256x256 window of that.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 380, 3), dtype=np.uint8)
    array = decode_and_resize(encode(Image.fromarray(pixels), "PNG"))
    assert np.array_equal(array, jpeg_q90(Image.fromarray(pixels))[22:278, 62:318])
    assert not np.array_equal(array, pixels[22:278, 62:318])  # the compression is there


def test_a_file_in_the_data_sets_form_is_not_compressed_twice() -> None:
    rng = np.random.default_rng(2)
    picture = Image.fromarray(rng.integers(0, 256, (300, 380, 3), dtype=np.uint8))
    as_in_the_data_set = encode(picture, "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(as_in_the_data_set)))
    assert preprocessing.in_dataset_form(preprocessing.open_header(as_in_the_data_set))
    assert np.array_equal(decode_and_resize(as_in_the_data_set), decoded[22:278, 62:318])
    # Another quality, 4:4:4 chroma, or a larger image is not in that form: saved at quality 90.
    for other in (
        encode(picture, "JPEG", quality=95),
        encode(picture, "JPEG", quality=90, subsampling=0),
        encode(picture.resize((500, 400)), "JPEG", quality=90),
    ):
        assert not preprocessing.in_dataset_form(preprocessing.open_header(other))
    higher = encode(picture, "JPEG", quality=95)
    expected = jpeg_q90(Image.open(io.BytesIO(higher)).convert("RGB"))[22:278, 62:318]
    assert np.array_equal(decode_and_resize(higher), expected)


def test_larger_images_are_scaled_like_the_data_set_then_windowed() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (800, 1000, 3), dtype=np.uint8))
    assert preprocessing.dataset_size(1000, 800) == (384, 307)
    expected = jpeg_q90(image.resize((384, 307), Image.Resampling.LANCZOS))[25:281, 64:320]
    # Only the window's region is scaled (Pillow's box, coefficients from another origin): a few
    # values of even this worst case (noise) move by a level or three.
    difference = np.abs(decode_and_resize(encode(image, "PNG")).astype(int) - expected)
    assert difference.max() <= 3 and np.mean(difference > 0) < 0.005


@pytest.mark.parametrize("size", [(256, 256), (257, 300), (300, 380), (384, 271), (383, 384), (290, 333)])
def test_the_jpeg_step_on_the_windows_region_equals_it_on_the_whole_image(size: tuple[int, int]) -> None:
    """Step 4 saves only whole JPEG blocks around the window (with room for the decoder's chroma
    upsampling): the window's pixels are exactly those of the whole image's round trip."""
    width, height = size
    rng = np.random.default_rng(width * height)
    smooth = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    texture = rng.integers(-20, 21, (height, width, 3))
    image = Image.fromarray(
        np.clip(
            np.asarray(smooth.resize((width, height), Image.Resampling.BICUBIC)) + texture, 0, 255
        ).astype(np.uint8)
    )
    top, left = (height - IMAGE_SIZE) // 2, (width - IMAGE_SIZE) // 2
    expected = jpeg_q90(image)[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    assert np.array_equal(preprocessing.resize_to_model_input(image, recompress=True), expected)


def test_uploads_become_the_data_sets_own_images(uploads_dir: Path, ai_vs_real_dir: Path) -> None:
    """The 41 uploads include originals of data set images (found by difference hash): the canonical
    image of the original equals that of the data set's file, as the model saw it in training."""
    from training.data import difference_hash, load_examples

    examples = load_examples(ai_vs_real_dir)
    hashes = np.asarray([difference_hash(example.path) for example in examples], dtype=np.uint64)
    pairs = []
    for path in sorted(uploads_dir.iterdir()):
        if path.suffix.lower() == ".csv":
            continue
        bits = np.unpackbits((hashes ^ np.uint64(difference_hash(path))).view(np.uint8)).reshape(
            len(hashes), 64
        )
        nearest = int(bits.sum(axis=1).argmin())
        if bits[nearest].sum() <= 4:
            pairs.append((path, examples[nearest].path))
    assert len(pairs) >= 30
    differences = [
        np.abs(decode_and_resize(a.read_bytes()).astype(int) - decode_and_resize(b.read_bytes()))
        for a, b in pairs
    ]
    exact = sum(int(difference.max() == 0) for difference in differences)
    # The same image up to the rounding of the window-only scaling (a few values by <= 3 levels);
    # without the JPEG step every pair differs in most values (mean 3.47 levels).
    same = sum(int(difference.max() <= 3 and np.mean(difference > 0) < 0.005) for difference in differences)
    print(f"{same} of {len(pairs)} uploads give their data set image's canonical image ({exact} exactly)")
    assert same >= 0.8 * len(pairs) and exact >= 0.75 * len(pairs)


def test_short_sides_are_mirrored_not_stretched() -> None:
    # A 40 x 300 strip keeps its pixels in the middle; the rest of the window mirrors them.
    strip = np.tile(np.arange(40, dtype=np.uint8)[np.newaxis, :, np.newaxis], (300, 1, 3)) * 5
    array = preprocessing.centre_window(strip)
    row = array[128, :, 0].astype(int)
    assert np.array_equal(row[108:148], strip[0, :, 0])  # the strip itself, centred
    assert np.array_equal(row[107::-1][:20], strip[0, :20, 0])  # mirrored at its left edge
    assert set(row.tolist()) == set(strip[0, :, 0].tolist())  # copies of its pixels, no interpolation
    assert np.array_equal(array[:, :, 0], np.tile(row, (256, 1)))
    # Through the whole normalization: the window of the strip as the data set would save it.
    saved = jpeg_q90(Image.fromarray(strip))
    assert np.array_equal(
        decode_and_resize(encode(Image.fromarray(strip), "PNG")), preprocessing.centre_window(saved)
    )


def test_jpeg_dct_scaling_stays_within_two_levels_of_a_full_decode() -> None:
    # A 3000 px JPEG decodes at half size (still >= 3 x 384 per side): nearly the same pixels, cheaper.
    image = gradient(3000, 2000).filter(ImageFilter.GaussianBlur(4))
    content = encode(image, "JPEG", quality=90)
    # Compared before the JPEG quality-90 step, which can turn a one-level difference into a few.
    drafted = preprocessing.resize_to_model_input(preprocessing.open_image(content), recompress=False)
    full = preprocessing.resize_to_model_input(
        Image.open(io.BytesIO(content)).convert("RGB"), recompress=False
    )
    assert not np.array_equal(drafted, full)  # the draft did decode at a reduced scale
    drafted, full = drafted.astype(int), full.astype(int)
    assert np.abs(drafted - full).max() <= 2


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 100))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rotated = preprocessing.open_image(encode(image, "JPEG", exif=exif, quality=95))
    assert rotated.size == (100, 200)  # portrait after transposing
    top = np.asarray(rotated)[10, 50]
    assert top[2] > 200 and top[0] < 60  # blue (the former left half) is on top


def test_alpha_is_composited_over_white() -> None:
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert decode_and_resize(encode(transparent, "PNG")).min() == 255


@pytest.mark.parametrize(
    ("mode", "value"),
    [("L", 128), ("P", 3), ("CMYK", (0, 0, 0, 0)), ("LA", (10, 255)), ("I;16", 65535), ("1", 1)],
)
def test_other_modes_become_rgb(mode: str, value: object) -> None:
    image = Image.new(mode, (40, 30), value)  # type: ignore[arg-type]
    image_format = "TIFF" if mode == "CMYK" else "PNG"
    array = decode_and_resize(encode(image, image_format))
    assert array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    if mode in ("I;16", "1"):
        assert array.min() == 255  # full-scale white stays white


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    array = decode_and_resize(buffer.getvalue())
    assert array[..., 0].mean() > 200 and array[..., 1].mean() < 50


def test_pixel_limit_is_checked_before_decoding() -> None:
    # A 20000x20000 PNG of one colour compresses to a few hundred KB: a decompression bomb.
    header_only = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageTooLargeError, match="limit"):
        decode_and_resize(header_only, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotAnImageError),
        (b"hello, I am a text file pretending to be a JPEG", NotAnImageError),
        (b"<html><body>not an image</body></html>", NotAnImageError),
        (b"%PDF-1.7 ...", UnsupportedFormatError),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, CorruptImageError),
    ],
)
def test_bad_bytes_raise_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_and_resize(data)


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode(gradient(), "JPEG", quality=90)
    with pytest.raises(CorruptImageError, match="corrupt or truncated"):
        decode_and_resize(data[: len(data) // 3])


def test_real_uploads_all_decode(uploads_dir: Path) -> None:
    files = sorted(path for path in uploads_dir.iterdir() if path.suffix.lower() != ".csv")
    assert len(files) >= 40
    for path in files:
        assert decode_and_resize(path.read_bytes()).shape == (IMAGE_SIZE, IMAGE_SIZE, 3), path.name


_MEASURE_DECODE = """
import resource, sys
from common.preprocessing import decode_cost_bytes, load_rgb, open_header, resize_to_model_input
data = open(sys.argv[1], "rb").read()
header = open_header(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
pixels = resize_to_model_input(load_rgb(header), recompress=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - before, decode_cost_bytes(header), pixels.shape)
"""


@pytest.fixture(scope="module")
def worst_case_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.reliability.corpus import worst_case_decodes

    folder = tmp_path_factory.mktemp("worst-case")
    paths = {}
    for name, data in worst_case_decodes().items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name", ["png-16-bit-grey", "tiff-float", "png-rgba", "png-rgb"])
def test_decoding_stays_within_the_cost_estimated_from_the_header(
    worst_case_files: dict[str, Path], name: str
) -> None:
    """The 49-megapixel files that took 0.9-1.3 GB each (issue 13) are reduced in their own mode
    before any wider copy is made: the peak stays within decode_cost_bytes, the gateway's budget
    unit, and far under the old peaks. Measured in a fresh process (its own peak RSS)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE_DECODE, str(worst_case_files[name])],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    grown, estimate, shape = result.stdout.split(maxsplit=2)
    assert shape.strip() == f"({IMAGE_SIZE}, {IMAGE_SIZE}, 3)"
    assert int(grown) <= int(estimate), (
        f"{name}: grew {int(grown) >> 20} MiB, estimated {int(estimate) >> 20}"
    )
    assert int(estimate) < 450 * 1024 * 1024
