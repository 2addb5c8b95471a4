"""Reading multipart uploads: limits hold while the body streams in; decoding is the shared function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.preprocessing import IMAGE_SIZE, ImageInputError, decode_and_resize
from gateway.errors import (
    MissingFileError,
    RequestTimeoutError,
    ServerBusyError,
    TooManyFilesError,
    UploadTooLargeError,
)
from gateway.uploads import ImageDecoder, max_body_bytes, read_multipart_files
from tests.gateway import images
from tests.gateway.conftest import MakeClient

BOUNDARY = "test-boundary"
HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def part(field: str, filename: str, data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


class CountingBody:
    """Yields a body in 1 KiB chunks and counts how many were taken."""

    def __init__(self, body: bytes) -> None:
        self.chunks = [body[start : start + 1024] for start in range(0, len(body), 1024)]
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


def read(body: CountingBody, **limits: int) -> list:  # type: ignore[type-arg]
    options = {"max_files": 4, "max_file_bytes": 10_000, "max_body_bytes": 1_000_000, **limits}
    return asyncio.run(read_multipart_files(HEADERS, body.__aiter__(), field_names=("file",), **options))


def test_files_are_read_with_their_names() -> None:
    data = images.solid(10)
    body = part("file", "a.png", data) + part("other", "b.png", b"xyz") + f"--{BOUNDARY}--\r\n".encode()
    (file,) = read(CountingBody(body))
    assert (file.filename, bytes(file.data)) == ("a.png", data)


def test_a_file_over_the_limit_stops_the_read_early() -> None:
    body = CountingBody(part("file", "big.bin", b"\x00" * 200_000) + f"--{BOUNDARY}--\r\n".encode())
    with pytest.raises(UploadTooLargeError):
        read(body, max_file_bytes=10_000)
    assert body.taken < 15 < len(body.chunks)  # ~10 KiB read out of ~200 KiB


def test_a_body_over_its_limit_stops_the_read_early() -> None:
    body = CountingBody(b"".join(part("file", f"{index}.bin", b"\x01" * 5000) for index in range(20)))
    with pytest.raises(UploadTooLargeError):
        read(body, max_files=100, max_body_bytes=20_000)
    assert body.taken <= 21 < len(body.chunks)


def test_too_many_files_stops_at_the_first_extra_file() -> None:
    body = CountingBody(b"".join(part("file", f"{index}.bin", b"\x01" * 3000) for index in range(10)))
    with pytest.raises(TooManyFilesError):
        read(body, max_files=2)
    assert body.taken < len(body.chunks) // 2


def test_no_file_in_the_expected_field() -> None:
    with pytest.raises(MissingFileError, match="'other'"):
        read(CountingBody(part("other", "a.png", b"x") + f"--{BOUNDARY}--\r\n".encode()))


def test_body_limit_leaves_room_for_part_headers() -> None:
    assert max_body_bytes(2, 1000) > 2000


def test_gateway_decoding_is_the_shared_decode_and_resize(uploads_dir: Path) -> None:
    decoder = ImageDecoder(threads=2, max_pixels=50_000_000, memory_budget_bytes=768 << 20)
    for path in sorted(uploads_dir.iterdir()):
        if path.suffix == ".csv":
            continue
        data = path.read_bytes()
        decoded = asyncio.run(decoder.decode(data))
        assert np.array_equal(decoded.pixels, decode_and_resize(data)), path.name
        assert decoded.decode_seconds > 0 and decoded.resize_seconds > 0


def test_decoder_runs_off_the_event_loop() -> None:
    decoder = ImageDecoder(threads=2, max_pixels=10_000, memory_budget_bytes=64 << 20)

    async def decode_two() -> list:  # type: ignore[type-arg]
        return list(await asyncio.gather(decoder.decode(images.solid(1)), decoder.decode(images.solid(2))))

    try:
        first, second = asyncio.run(decode_two())
    finally:
        decoder.close()
    assert first.pixels.shape == second.pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_decoder_refuses_what_does_not_fit_its_memory_budget() -> None:
    """A decode reserves its header-estimated cost: over what is left -> ServerBusyError (503 with
    Retry-After); over the whole budget -> UploadTooLargeError (413); the budget is given back
    when decodes end, failed ones included."""
    small = images.encode(images.gradient(320, 240), "PNG")  # ~0.7 MiB estimated
    big = images.encode(images.gradient(2000, 1500), "PNG")  # ~25 MiB estimated
    decoder = ImageDecoder(
        threads=2, max_pixels=50_000_000, memory_budget_bytes=16 << 20, retry_after_seconds=7
    )

    async def scenario() -> None:
        with pytest.raises(UploadTooLargeError, match="MiB"):
            await decoder.decode(big)
        assert decoder.budget.try_reserve(decoder.budget.total_bytes - (256 << 10))  # others hold it
        with pytest.raises(ServerBusyError) as busy:
            await decoder.decode(small)
        assert busy.value.headers == {"Retry-After": "7"} and "try again in 7 s" in busy.value.message
        decoder.budget.release(decoder.budget.total_bytes - (256 << 10))
        assert (await decoder.decode(small)).pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        with pytest.raises(ImageInputError):
            await decoder.decode(small[: len(small) // 2])  # truncated: fails while decoding
        assert decoder.budget.reserved_bytes == 0

    try:
        asyncio.run(scenario())
    finally:
        decoder.close()


class SlowBody:
    """The first chunks of a body, `pause` seconds apart, then (if `stall`) nothing more."""

    def __init__(self, chunks: list[bytes], pause: float, stall: bool) -> None:
        self.chunks, self.pause, self.stall = chunks, pause, stall

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await asyncio.sleep(self.pause)
            yield chunk
        if self.stall:
            await asyncio.sleep(3600)


@pytest.mark.parametrize(
    ("pause", "stall", "what"),
    [(0.0, True, "stalled"), (0.2, False, "too slow in all")],
)
def test_a_body_that_does_not_arrive_in_time_is_dropped_with_408(
    pause: float, stall: bool, what: str
) -> None:
    """Issue 13: stalled uploads held their buffered bytes (up to ~57 MiB each) forever."""
    body = part("file", "a.png", images.solid(10)) + f"--{BOUNDARY}--\r\n".encode()
    chunks = [body[start : start + 16] for start in range(0, len(body), 16)]
    slow = SlowBody(chunks[:-1] if stall else chunks, pause, stall)

    async def reading() -> None:
        await read_multipart_files(
            HEADERS,
            slow.__aiter__(),
            field_names=("file",),
            max_files=1,
            max_file_bytes=100_000,
            max_body_bytes=1_000_000,
            total_seconds=0.5,
            idle_seconds=0.3,
        )

    with pytest.raises(RequestTimeoutError, match="did not arrive in time"):
        asyncio.run(reading())
    assert RequestTimeoutError.status_code == 408, what


def test_uploads_being_read_share_one_memory_budget(make_client: MakeClient) -> None:
    """Issue 13: stalled batch uploads held ~57 MiB each with no bound on their sum. Bytes are
    taken from one budget as they arrive (503 + Retry-After when it is spent) and given back when
    the request is answered, whatever the answer."""
    client, _ = make_client(upload_memory_budget_bytes=1 << 20, retry_after_seconds=3)
    budget = client.app.state.upload_budget  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    big = images.encode(Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)), "PNG")
    assert len(big) > 1 << 20
    response = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert "too many uploads" in response.json()["error"]
    assert budget.reserved_bytes == 0
    small = images.solid(20)
    assert client.post("/predict", files={"file": ("s.png", small, "image/png")}).status_code == 200
    assert (
        client.post("/predict/batch", files=[("files", ("a.png", small, "image/png"))] * 3).status_code == 200
    )
    assert budget.reserved_bytes == 0
