"""The files the load tests send: the real uploads in ../shared/data/uploads (JPEG, PNG, WebP,
20 KB to 2.5 MB, listed in its manifest.csv), and their multipart bodies built once.

Bodies are prepared before the load starts so the load generator spends its CPU on sending,
not on encoding: on 2 shared cores every millisecond of client work is taken from the server.
"""

from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.preprocessing import decode_and_resize, sniff_format

MANIFEST_FILE = "manifest.csv"
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# The gateway's multipart field for one file (ARCHITECTURE.md contract 5).
UPLOAD_FIELD = "file"


class SamplesError(RuntimeError):
    """The upload samples are missing or unreadable; the message says where they were expected."""


@dataclass(frozen=True)
class UploadSample:
    filename: str
    label: str
    data: bytes
    content_type: str

    @property
    def format(self) -> str:
        return self.content_type.removeprefix("image/").upper()


@dataclass(frozen=True)
class MultipartUpload:
    """One sample as a ready-to-send `multipart/form-data` body with its Content-Type header."""

    sample: UploadSample
    body: bytes
    content_type: str


def load_uploads(directory: Path) -> list[UploadSample]:
    """Every file of the manifest, in manifest order."""
    manifest = Path(directory) / MANIFEST_FILE
    if not manifest.is_file():
        raise SamplesError(
            f"no {MANIFEST_FILE} in {directory}: the uploads live in ../shared/data/uploads beside the "
            "repository (set AIDETECT_LOADTEST_UPLOADS_DIRECTORY or --uploads to use another folder)"
        )
    samples = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            data = (manifest.parent / row["file"]).read_bytes()
            image_format = sniff_format(data) or "unknown"
            samples.append(
                UploadSample(
                    filename=row["file"],
                    label=row.get("label", ""),
                    data=data,
                    content_type=CONTENT_TYPES.get(image_format, "application/octet-stream"),
                )
            )
    if not samples:
        raise SamplesError(f"{manifest} lists no files")
    return samples


def multipart_upload(sample: UploadSample, field: str = UPLOAD_FIELD) -> MultipartUpload:
    """The body a browser form would send for this one file."""
    boundary = f"aidetect-loadtest-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{sample.filename}"\r\n'
        f"Content-Type: {sample.content_type}\r\n\r\n"
    ).encode()
    body = head + sample.data + f"\r\n--{boundary}--\r\n".encode()
    return MultipartUpload(sample, body, f"multipart/form-data; boundary={boundary}")


def model_inputs(samples: list[UploadSample]) -> np.ndarray:
    """The samples through the shared decode-and-resize: uint8 [N, 256, 256, 3], what the gateway sends."""
    return np.stack([decode_and_resize(sample.data) for sample in samples])
