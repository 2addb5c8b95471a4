"""Property-based passes: hypothesis on the shared decoder, schemathesis on the gateway's OpenAPI.

- common.preprocessing.decode_and_resize, for any bytes and for real encodings of random
  images (then damaged): the model's uint8 [224, 224, 3] or a typed ImageInputError, nothing
  else; an undamaged image always decodes, and a flat colour stays that colour.
- schemathesis generates requests from the real gateway process's /openapi.json (every route,
  valid and invalid parameters, headers and bodies): no answer may be a 5xx.

CI runs a fixed sample (derandomized); `make fuzz` runs more, with new seeds.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.preprocessing import IMAGE_SIZE, ImageInputError, decode_and_resize
from tests.reliability.conftest import FuzzSettings
from tests.reliability.stack import Stack

FORMATS = {"PNG": {}, "JPEG": {"quality": 80}, "WEBP": {"quality": 80}, "BMP": {}, "GIF": {}, "TIFF": {}}
LOSSLESS_RGB_FORMATS = ("PNG", "BMP", "TIFF")
MODES_BY_FORMAT = {
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"),
    "JPEG": ("RGB", "L", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("RGB", "L", "P", "1"),
    "GIF": ("P", "L"),
    "TIFF": ("RGB", "RGBA", "L", "CMYK", "I;16", "F"),
}


def property_settings(examples: int, fuzz_scale: int) -> settings:
    return settings(
        max_examples=examples * fuzz_scale,
        deadline=None,
        database=None,  # nothing written into the repository
        derandomize=fuzz_scale == 1,  # CI sees the same examples every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SCALE = FuzzSettings.from_environment().scale


def assert_model_input_or_refusal(data: bytes) -> np.ndarray | None:
    try:
        pixels = decode_and_resize(data)
    except ImageInputError as error:
        assert str(error), "a refusal without a message"
        return None
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == np.uint8
    return pixels


@property_settings(400, SCALE)
@given(data=st.binary(max_size=4096))
def test_any_bytes_become_the_model_input_or_a_typed_refusal(data: bytes) -> None:
    assert_model_input_or_refusal(data)


@st.composite
def encoded_images(draw: st.DrawFn) -> tuple[bytes, str, str, tuple[int, int, int] | None]:
    """(file bytes, format, mode, the flat colour when the image is one)."""
    image_format = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(MODES_BY_FORMAT[image_format]))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    flat = draw(st.booleans())
    colour = (draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
    if flat:
        image = Image.new("RGB", (width, height), colour)
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
    converted = image.convert(mode) if mode not in ("I;16", "F") else image.convert("L").convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, format=image_format, **FORMATS[image_format])
    return buffer.getvalue(), image_format, mode, colour if flat and mode in ("RGB", "RGBA") else None


@property_settings(150, SCALE)
@given(image=encoded_images())
def test_every_encoding_decodes_and_a_flat_colour_stays_flat(
    image: tuple[bytes, str, str, tuple[int, int, int] | None],
) -> None:
    data, image_format, mode, colour = image
    pixels = decode_and_resize(data)  # an undamaged image must decode
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == np.uint8
    if colour is not None and image_format in LOSSLESS_RGB_FORMATS:
        # Flat after the data set's JPEG quality-90 save too: every block is the same, so the colour
        # becomes what that save makes of it (YCbCr rounding and quantization), the same everywhere.
        assert np.all(pixels == flat_after_quality_90(colour)), (image_format, mode, colour)


def flat_after_quality_90(colour: tuple[int, int, int]) -> np.ndarray:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG", quality=90)
    saved = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.all(saved == saved[0, 0]) and np.abs(saved[0, 0].astype(int) - colour).max() <= 3
    return saved[0, 0]


@property_settings(300, SCALE)
@given(
    image=encoded_images(),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_encodings_decode_or_are_refused(
    image: tuple[bytes, str, str, tuple[int, int, int] | None],
    edits: list[tuple[float, int]],
    cut: float | None,
) -> None:
    data = bytearray(image[0])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    assert_model_input_or_refusal(bytes(data))


# ---------------------------------------------------------------- schemathesis against the real gateway


@pytest.mark.integration
@pytest.mark.model
def test_gateway_openapi_fuzzing_finds_no_server_error(
    production_like_stack: Stack, fuzz: FuzzSettings, tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{production_like_stack.gateway_url}/openapi.json",
        "--checks=not_a_server_error",
        f"--max-examples={40 * fuzz.scale}",
        f"--seed={fuzz.seed}",
        "--request-timeout=60",
        "--workers=2",
        "--no-color",
        f"--report-json-path={report}",
        "--report=json",
    ]
    if fuzz.scale == 1:
        command.append("--generation-deterministic")
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    summary = json.loads(report.read_text()) if report.exists() else {}
    fuzz.record("schemathesis", {"exit_code": result.returncode, "report": summary})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
