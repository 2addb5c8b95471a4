"""Reading uploads with byte limits enforced while reading, and decoding them off the event loop.

The multipart body is parsed as it streams in (python-multipart's push parser), so a file over
`max_upload_bytes` or a body over its total limit is refused as soon as the limit is crossed,
without buffering the rest. Files stay in memory: they are decoded from bytes anyway.

Decoding is the shared decode-and-resize of common.preprocessing (contract 1), split into its
steps to time them and to budget its memory; it runs in bounded thread pools, never on the event
loop. Memory: every decode reserves its cost, estimated from the image's header before a pixel is
decoded (`decode_cost_bytes`), from one budget; when the budget is spent the upload is answered
503 with Retry-After instead of queueing. Images that cost more than `LARGE_DECODE_BYTES` decode
in a lane of their own, so small uploads are never stuck behind them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from common.preprocessing import (
    decode_cost_bytes,
    in_dataset_form,
    load_rgb,
    open_header,
    resize_to_model_input,
)
from gateway.errors import (
    BadRequestError,
    MissingFileError,
    RequestTimeoutError,
    ServerBusyError,
    TooManyFilesError,
    UploadTooLargeError,
)
from gateway.provenance import Finding, read_provenance

MULTIPART_CONTENT_TYPE = b"multipart/form-data"
# Room for part headers and small form fields on top of the files' own bytes.
PART_OVERHEAD_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 256
MEBIBYTE = 1024 * 1024
# Decodes estimated above this (e.g. a PNG of more than ~8 million pixels) take the large lane.
LARGE_DECODE_BYTES = 64 * MEBIBYTE


@dataclass
class UploadedFile:
    field_name: str
    filename: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    field_name: str = ""
    filename: str | None = None
    size: int = 0
    file: UploadedFile | None = None


class _MultipartCollector:
    """python-multipart callbacks that keep file parts in memory and enforce the limits as data arrives."""

    def __init__(self, max_files: int, max_file_bytes: int) -> None:
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.files: list[UploadedFile] = []
        self.field_names: list[str] = []
        self.part_count = 0
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
        }

    def on_part_begin(self) -> None:
        self.part_count += 1
        if self.part_count > MAX_PARTS:
            raise BadRequestError(f"the form has more than {MAX_PARTS} parts")
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._part.headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        part = self._part
        _, options = parse_options_header(part.headers.get("content-disposition", ""))
        part.field_name = options.get(b"name", b"").decode("utf-8", errors="replace")
        filename = options.get(b"filename")
        self.field_names.append(part.field_name)
        if filename is None:
            return  # a plain form field: size-limited below, otherwise ignored
        part.filename = filename.decode("utf-8", errors="replace")
        if len(self.files) >= self.max_files:
            raise TooManyFilesError(f"too many files: at most {self.max_files} per request")
        part.file = UploadedFile(
            field_name=part.field_name,
            filename=part.filename,
            content_type=part.headers.get("content-type", "application/octet-stream"),
        )
        self.files.append(part.file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.file is None:
            if part.size > MAX_FIELD_BYTES:
                raise UploadTooLargeError(f"form field {part.field_name!r} is over {MAX_FIELD_BYTES} bytes")
            return
        if part.size > self.max_file_bytes:
            raise UploadTooLargeError(
                f"file {part.file.filename!r} is over the limit of {self.max_file_bytes:,} bytes"
            )
        part.file.data += data[start:end]


async def read_multipart_files(
    headers: dict[str, str] | Iterable[tuple[str, str]],
    body: AsyncIterator[bytes],
    *,
    field_names: tuple[str, ...],
    max_files: int,
    max_file_bytes: int,
    max_body_bytes: int,
    total_seconds: float = 120.0,
    idle_seconds: float = 15.0,
    hold: UploadHold | None = None,
) -> list[UploadedFile]:
    """The uploaded files of a multipart/form-data body, under byte and count limits.

    `headers` are the request's (lower-case names); `body` its chunks as they arrive. Files in
    other fields than `field_names` count against the limits but are not returned; empty file
    parts (a browser's "no file chosen") are dropped. Raises MissingFileError when none is left.
    """
    header_map = {
        name.lower(): value for name, value in (headers.items() if isinstance(headers, dict) else headers)
    }
    content_type, options = parse_options_header(header_map.get("content-type", ""))
    expected = " or ".join(repr(name) for name in field_names)
    if content_type != MULTIPART_CONTENT_TYPE:
        raise MissingFileError(f"no file: send the image as multipart/form-data in the field {expected}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequestError("the multipart body has no boundary in its Content-Type")
    declared_length = header_map.get("content-length") or ""
    # ASCII digits only: str.isdigit() also accepts Unicode digits ("\u00b2"), which int() refuses.
    if declared_length.isascii() and declared_length.isdigit() and int(declared_length) > max_body_bytes:
        # Refused from the header alone, before a byte of the body is read.
        raise UploadTooLargeError(
            f"the request body is {int(declared_length):,} bytes; the limit is {max_body_bytes:,}"
        )

    collector = _MultipartCollector(max_files=max_files, max_file_bytes=max_file_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    chunks = aiter(body)
    try:
        async with asyncio.timeout(total_seconds):
            while True:
                try:
                    async with asyncio.timeout(idle_seconds):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                received += len(chunk)
                if hold is not None:
                    hold.take(len(chunk))  # all uploads being read together stay within a budget
                if received > max_body_bytes:
                    # Chunked bodies (or lying Content-Length headers) stop here, mid-stream.
                    raise UploadTooLargeError(
                        f"the request body is over the limit of {max_body_bytes:,} bytes"
                    )
                parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise BadRequestError(f"malformed multipart body: {error}") from error
    except TimeoutError as error:
        # A slow or stalled sender does not hold its buffered bytes (up to the body limit) forever.
        raise RequestTimeoutError(
            f"the upload did not arrive in time ({received:,} bytes in; at most {total_seconds:g} s "
            f"in all and {idle_seconds:g} s without data)"
        ) from error

    # A browser sends an empty part with filename "" when no file was chosen: that is no file.
    files = [
        file for file in collector.files if file.field_name in field_names and (file.size or file.filename)
    ]
    if not files:
        found = sorted(set(collector.field_names))
        hint = f" (the form has the fields {found})" if found else ""
        raise MissingFileError(f"no file: send the image in the multipart field {expected}{hint}")
    return files


def max_body_bytes(file_count: int, max_file_bytes: int) -> int:
    """Total body limit for `file_count` files of at most `max_file_bytes` each, plus their headers."""
    return file_count * (max_file_bytes + PART_OVERHEAD_BYTES) + PART_OVERHEAD_BYTES


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 [256, 256, 3]
    decode_seconds: float
    resize_seconds: float
    provenance: tuple[Finding, ...] | None = None  # None: not read (settings.read_provenance off)
    provenance_seconds: float = 0.0


def finish_decode(header: Image.Image, started: float, image_bytes: bytes | None = None) -> DecodedImage:
    """The rest of common.preprocessing.decode_and_resize after `open_header`, in two timed halves
    (same functions, same result: tests/gateway/test_uploads.py); then, given the original bytes,
    their provenance (from the metadata Pillow parsed on the way)."""
    recompress = not in_dataset_form(header)
    image = load_rgb(header)
    decoded = time.perf_counter()
    pixels = resize_to_model_input(image, recompress=recompress)
    resized = time.perf_counter()
    findings = read_provenance(image_bytes, header) if image_bytes is not None else None
    return DecodedImage(
        pixels,
        decode_seconds=decoded - started,
        resize_seconds=resized - decoded,
        provenance=findings,
        provenance_seconds=time.perf_counter() - resized,
    )


class MemoryBudget:
    """Bytes that decodes in progress may hold together; taken without waiting, or refused."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    def try_reserve(self, size: int) -> bool:
        with self._lock:
            if self._reserved + size > self.total_bytes:
                return False
            self._reserved += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size


class UploadHold:
    """The upload bytes one request holds in memory, taken from the app's upload budget as they
    arrive and given back when the request ends (a FastAPI dependency does both)."""

    def __init__(self, budget: MemoryBudget, retry_after_seconds: int) -> None:
        self.budget = budget
        self.retry_after_seconds = retry_after_seconds
        self.held_bytes = 0

    def take(self, size: int) -> None:
        if not self.budget.try_reserve(size):
            raise ServerBusyError(
                "the server is receiving too many uploads right now; "
                f"try again in {self.retry_after_seconds} s",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        self.held_bytes += size

    def release(self) -> None:
        self.budget.release(self.held_bytes)
        self.held_bytes = 0


class ImageDecoder:
    """Bounded thread pools for decoding: the event loop keeps serving while Pillow works.

    `threads` decode ordinary images (and read every header); one more thread decodes the
    images that cost over LARGE_DECODE_BYTES, one at a time. All decodes together hold at most
    `memory_budget_bytes` (estimated from headers): an upload that does not fit now gets
    ServerBusyError (503 + Retry-After), one that could never fit gets UploadTooLargeError."""

    def __init__(
        self,
        threads: int,
        max_pixels: int,
        memory_budget_bytes: int,
        retry_after_seconds: int = 5,
        read_provenance: bool = True,
    ) -> None:
        self.max_pixels = max_pixels
        self.read_provenance = read_provenance
        self.budget = MemoryBudget(memory_budget_bytes)
        self.retry_after_seconds = retry_after_seconds
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self._large = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-large")

    async def decode(self, image_bytes: bytes) -> DecodedImage:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        header = await loop.run_in_executor(self._executor, open_header, image_bytes, self.max_pixels)
        cost = decode_cost_bytes(header)
        if cost > self.budget.total_bytes:
            raise UploadTooLargeError(
                f"decoding this {header.size[0]}x{header.size[1]} {header.mode} image needs about "
                f"{cost / MEBIBYTE:,.0f} MiB; the gateway decodes at most "
                f"{self.budget.total_bytes / MEBIBYTE:,.0f} MiB at a time"
            )
        if not self.budget.try_reserve(cost):
            raise ServerBusyError(
                "the server is decoding other large images right now; "
                f"try again in {self.retry_after_seconds} s",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        lane = self._large if cost > LARGE_DECODE_BYTES else self._executor
        try:
            future = lane.submit(
                finish_decode, header, started, image_bytes if self.read_provenance else None
            )
        except BaseException:
            self.budget.release(cost)
            raise
        # Released when the decode ends, even if the client has gone and nobody awaits it.
        future.add_done_callback(lambda _: self.budget.release(cost))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)
