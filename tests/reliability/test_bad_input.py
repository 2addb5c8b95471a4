"""The hostile-upload corpus (corpus.py) against a real gateway process and model server.

Every request gets a 4xx with a message or the correct prediction, never a 5xx; the gateway
process is the same one, alive, at the end; the resident memory of both processes stays under
a stated bound all along (sampled every 0.2 s), the same for 10x the requests (`make fuzz`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.gateway import images
from tests.reliability.conftest import FuzzSettings
from tests.reliability.corpus import (
    MULTIPART,
    Upload,
    batches_of,
    build_corpus,
    image_expectation,
    problems,
    real_upload_seeds,
    worst_case_decodes,
)
from tests.reliability.stack import MEBIBYTE, MemorySampler, Stack

pytestmark = [pytest.mark.integration, pytest.mark.model]

CONCURRENCY = 4  # two decode threads in the gateway: enough to overlap reading and decoding
# Memory is bounded when it does not grow with the number of requests: the first pass takes each
# process to its working set (allocator arenas sized by the largest decodes, one 4000x4000 image
# is ~100 MB in flight per decode thread), after which resident memory moves within a band
# (measured after pass 2 minus after pass 1: -3 to +66 MiB, the same spread for 10x the
# requests). The stated bounds hold for every pass: 84 MiB at start, 220-300 MiB measured with two
# decoding threads; 492 MiB since large images decode in a third lane of their own (issue 13), so
# three decodes of the corpus's 4000 x 4000 images can overlap. The bound for any load is the decode
# memory budget plus the working set: test_worst_case_decodes_stay_within_the_memory_budget.
GATEWAY_RSS_LIMIT = 700 * MEBIBYTE
MODEL_SERVER_RSS_LIMIT = 1024 * MEBIBYTE  # 690 MiB at start (TensorFlow and the model), ~750 measured


async def send_all(url: str, uploads: list[Upload]) -> list[tuple[Upload, int, bytes]]:
    """Every upload once, CONCURRENCY at a time; an answer is (upload, status, body)."""
    queue: asyncio.Queue[Upload] = asyncio.Queue()
    for upload in uploads:
        queue.put_nowait(upload)
    answers: list[tuple[Upload, int, bytes]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            upload = queue.get_nowait()
            try:
                response = await client.post(
                    upload.path,
                    files=list(upload.files) or None,
                    content=upload.content,
                    headers=[(name.encode(), header_bytes(value)) for name, value in upload.headers],
                    params=dict(upload.params),
                )
            except httpx.HTTPError as error:
                answers.append((upload, 0, f"{type(error).__name__}: {error}".encode()))
            else:
                answers.append((upload, response.status_code, response.content))

    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return answers


def header_bytes(value: str) -> bytes:
    """Some cases put non-ASCII characters in headers on purpose: as Latin-1 (how servers read
    header bytes) when possible, else as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def check(answers: list[tuple[Upload, int, bytes]]) -> list[str]:
    failures = []
    for upload, status, body in answers:
        if status == 0:
            failures.append(f"{upload.name}: no answer ({body.decode(errors='replace')})")
            continue
        for problem in problems(upload, status, body, partial(json.loads, body)):
            failures.append(f"{upload.name}: {problem}")
    return failures


def test_hostile_corpus_gets_4xx_or_the_right_prediction(
    production_like_stack: Stack, uploads_dir: Path, fuzz: FuzzSettings
) -> None:
    """Two passes, each answer checked both times; resident memory sampled all along."""
    stack = production_like_stack
    corpus = build_corpus(real_upload_seeds(uploads_dir), seed=fuzz.seed, scale=fuzz.scale)
    requests = corpus + batches_of(corpus)
    assert len(corpus) >= 1000
    gateway_pid = stack.pid(stack.gateway)
    sampler = MemorySampler({"gateway": gateway_pid, "model_server": stack.pid(stack.model_server)})
    at_start = {name: sampler.rss(name) for name in sampler.pids}
    started = time.monotonic()
    with sampler:
        first_pass = asyncio.run(send_all(stack.gateway_url, requests))
        after_first_pass = {name: sampler.rss(name) for name in sampler.pids}
        second_pass = asyncio.run(send_all(stack.gateway_url, requests))
    elapsed = time.monotonic() - started
    after_second_pass = {name: sampler.rss(name) for name in sampler.pids}

    failures = check(first_pass) + check(second_pass)
    statuses = Counter(status for _, status, _ in first_pass)

    def mebibytes(values: dict[str, int]) -> dict[str, float]:
        return {name: round(value / MEBIBYTE, 1) for name, value in values.items()}

    fuzz.record(
        "corpus",
        {
            "requests_per_pass": len(requests),
            "passes": 2,
            "corpus_uploads": len(corpus),
            "batch_requests": len(requests) - len(corpus),
            "files_in_batches": sum(len(upload.files) for upload in requests[len(corpus) :]),
            "categories": dict(Counter(upload.category for upload in corpus)),
            "statuses_per_pass": {str(status): count for status, count in sorted(statuses.items())},
            "failures": failures,
            "seconds_two_passes": round(elapsed, 1),
            "rss_mib_at_start": mebibytes(at_start),
            "rss_mib_after_first_pass": mebibytes(after_first_pass),
            "rss_mib_after_second_pass": mebibytes(after_second_pass),
            "rss_mib_peak": mebibytes(sampler.peaks),
        },
    )
    assert not failures, f"{len(failures)} wrong answers:\n" + "\n".join(failures[:40])
    assert not any(status >= 500 for status in statuses), statuses
    assert stack.gateway.running and stack.pid(stack.gateway) == gateway_pid  # the same process, alive
    assert httpx.get(f"{stack.gateway_url}/health", timeout=10).status_code == 200
    assert sampler.peaks["gateway"] < GATEWAY_RSS_LIMIT, (at_start, after_first_pass, sampler.peaks)
    assert sampler.peaks["model_server"] < MODEL_SERVER_RSS_LIMIT, (at_start, after_first_pass, sampler.peaks)


# ---------------------------------------------------------------- broken HTTP, below multipart


def raw_exchange(port: int, request: bytes, read_timeout: float = 20.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet; b"" means it just closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as connection:
        try:
            connection.sendall(request)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close first: what it answered (if anything) is still readable
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def http_request(
    headers: list[str], body: bytes = b"", request_line: str = "POST /predict HTTP/1.1"
) -> bytes:
    return ("\r\n".join([request_line, "Host: 127.0.0.1", *headers]) + "\r\n\r\n").encode() + body


BROKEN_HTTP = {
    "content-length-not-a-number": http_request([f"Content-Type: {MULTIPART}", "Content-Length: abc"]),
    "content-length-negative": http_request([f"Content-Type: {MULTIPART}", "Content-Length: -5"]),
    "content-length-and-chunked": http_request(
        [f"Content-Type: {MULTIPART}", "Content-Length: 4", "Transfer-Encoding: chunked"], b"0\r\n\r\n"
    ),
    "bad-chunk-size": http_request(
        [f"Content-Type: {MULTIPART}", "Transfer-Encoding: chunked"], b"zz\r\nabc\r\n0\r\n\r\n"
    ),
    "header-without-colon": http_request(["this is not a header"]),
    "garbage-request-line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
    "http-0.9": b"POST /predict\r\n\r\n",
    "long-url": http_request([], request_line=f"POST /predict?{'a' * 100_000} HTTP/1.1"),
    "ten-gigabytes-declared": http_request([f"Content-Type: {MULTIPART}", f"Content-Length: {10 * 1024**3}"]),
    "body-shorter-than-declared": http_request(
        [f"Content-Type: {MULTIPART}", "Content-Length: 100000"], b"--" + b"x" * 100
    ),
    "many-headers": http_request([f"X-Header-{index}: {index}" for index in range(2000)]),
    "one-megabyte-header": http_request([f"Content-Type: {MULTIPART}", "X-Big: " + "a" * MEBIBYTE]),
}


def valid_upload_request(headers: list[str]) -> bytes:
    """A complete, valid /predict upload with extra headers: only the headers can be wrong."""
    boundary = "hardening"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + images.solid(90)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return http_request(
        [f"Content-Type: multipart/form-data; boundary={boundary}", f"Content-Length: {len(body)}", *headers],
        body,
    )


# Issue 13: a valid upload with an unbounded head was read and answered 200 (256 MiB of headers).
BROKEN_HTTP["valid-upload-with-a-megabyte-header"] = valid_upload_request(["X-Big: " + "a" * MEBIBYTE])
BROKEN_HTTP["valid-upload-with-1000-headers"] = valid_upload_request(
    [f"X-H{index}: {index}" for index in range(1000)]
)


@pytest.mark.parametrize("name", sorted(BROKEN_HTTP))
def test_broken_http_gets_4xx_or_a_closed_connection(production_like_stack: Stack, name: str) -> None:
    stack = production_like_stack
    answer = raw_exchange(stack.gateway_port, BROKEN_HTTP[name])
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert 400 <= status < 500, answer[:500]
        assert answer.split(b"\r\n\r\n", 1)[1].strip(), f"a {status} without a message"
    # Whatever it was, the gateway still serves.
    probe = images.solid(180)
    response = httpx.post(
        f"{stack.gateway_url}/predict", files={"file": ("p.png", probe, "image/png")}, timeout=60
    )
    assert response.status_code == 200
    assert response.json()["score"] == pytest.approx(image_expectation(probe).score, abs=1e-5)


POD_MEMORY_LIMIT = 1536 * MEBIBYTE  # k8s/base/gateway/deployment.yaml: the gateway's limit
# The decode budget (768 MiB) plus the gateway's own working set (~300 MiB after the corpus),
# leaving 336 MiB of the pod's limit as margin.
WORST_CASE_GATEWAY_RSS_LIMIT = 1200 * MEBIBYTE


async def _until_decoded(client: httpx.AsyncClient, name: str, data: bytes) -> tuple[int, list[str]]:
    """POST until the gateway takes the file: (503s with Retry-After before the 200, problems)."""
    busy, problems_seen = 0, []
    while True:
        response = await client.post("/predict", files={"file": (f"{name}.bin", data)})
        if response.status_code == 200:
            return busy, problems_seen
        if response.status_code != 503 or "Retry-After" not in response.headers:
            return busy, [*problems_seen, f"{name}: {response.status_code} {response.text[:200]}"]
        if "try again" not in response.json()["error"]:
            problems_seen.append(f"{name}: 503 without a reason: {response.text[:200]}")
        busy += 1
        await asyncio.sleep(0.2)  # shorter than Retry-After: the test need not wait that long


def test_worst_case_decodes_stay_within_the_memory_budget(
    production_like_stack: Stack, fuzz: FuzzSettings
) -> None:
    """Four clients each upload one of the costliest files under the pixel limit (49 Mpx 16-bit
    grey PNG, float TIFF, RGBA and RGB PNG), twice, while a fifth sends small JPEGs: the gateway's
    resident memory stays under WORST_CASE_GATEWAY_RSS_LIMIT, over-budget uploads get 503 with
    Retry-After (and then succeed), and every small upload is answered 200."""
    stack = production_like_stack
    worst = worst_case_decodes()
    small = images.encode(images.gradient(640, 480), "JPEG", quality=90)
    sampler = MemorySampler({"gateway": stack.pid(stack.gateway)}, interval=0.05)
    small_latencies: list[float] = []
    small_statuses: Counter[int] = Counter()

    async def run() -> list[tuple[int, list[str]]]:
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=300.0) as client:

            async def big(name: str, data: bytes) -> tuple[int, list[str]]:
                first = await _until_decoded(client, name, data)
                second = await _until_decoded(client, name, data)
                return first[0] + second[0], first[1] + second[1]

            async def small_ones() -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    response = await client.post("/predict", files={"file": ("small.jpg", small)})
                    small_latencies.append(time.perf_counter() - started)
                    small_statuses[response.status_code] += 1

            small_task = asyncio.create_task(small_ones())
            outcomes = await asyncio.gather(*(big(name, data) for name, data in worst.items()))
            done.set()
            await small_task
            return outcomes

    with sampler:
        outcomes = asyncio.run(run())
    problems_seen = [problem for _, found in outcomes for problem in found]
    ordered = sorted(small_latencies)
    fuzz.record(
        "worst-case-decodes",
        {
            "files": {name: len(data) for name, data in worst.items()},
            "busy_answers_503": sum(busy for busy, _ in outcomes),
            "gateway_rss_mib_peak": round(sampler.peaks["gateway"] / MEBIBYTE, 1),
            "small_requests": len(ordered),
            "small_statuses": dict(small_statuses),
            "small_p50_ms": round(1000 * ordered[len(ordered) // 2], 1) if ordered else None,
            "small_p95_ms": round(1000 * ordered[int(len(ordered) * 0.95)], 1) if ordered else None,
        },
    )
    assert not problems_seen, problems_seen
    assert set(small_statuses) == {200}, small_statuses
    assert sampler.peaks["gateway"] < WORST_CASE_GATEWAY_RSS_LIMIT < POD_MEMORY_LIMIT, (
        f"gateway peak {sampler.peaks['gateway'] / MEBIBYTE:.0f} MiB"
    )


def test_a_client_that_aborts_its_upload_is_a_499_without_a_traceback(production_like_stack: Stack) -> None:
    """Issue 13: an aborted upload was logged and counted as a 500 with a traceback, feeding the
    critical error-ratio alert. It is the client's doing: 499, outside the 5xx ratio."""
    stack = production_like_stack
    request_id = f"aborted-{time.time_ns()}"
    upload = valid_upload_request([f"X-Request-Id: {request_id}"])
    with socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=10) as connection:
        connection.sendall(upload[: len(upload) - 200])  # all but the end of the file
        time.sleep(0.5)  # the gateway is now waiting for the rest of the body
    deadline = time.monotonic() + 30
    access_line = f"request_id={request_id} method"
    while access_line not in (log := stack.gateway.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
    (line,) = [line for line in log.splitlines() if access_line in line]
    assert "status=499" in line, line
    after = log[log.index(request_id) - 200 :]
    assert "Traceback" not in after and "unhandled error" not in after, after[:2000]


def _closed_after(connection: socket.socket, trickle: bytes, limit: float) -> float | None:
    """Seconds until the server closes `connection` while we send `trickle` a byte every 0.5 s
    (nothing if empty); None if it is still open after `limit` seconds."""
    started = time.monotonic()
    connection.settimeout(0.5)
    sent = 0
    while time.monotonic() - started < limit:
        try:
            if connection.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle:
            try:
                connection.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
    return None


def test_silent_and_byte_a_second_connections_are_closed(production_like_stack: Stack) -> None:
    """Issue 13: silent and 1 byte/s connections stayed open forever (1,030 of them took a gateway
    with 1,024 descriptors offline). Each must send its request head within 10 s (the default)."""
    stack = production_like_stack
    slow_head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with (
        socket.create_connection(("127.0.0.1", stack.gateway_port)) as silent,
        socket.create_connection(("127.0.0.1", stack.gateway_port)) as trickling,
    ):
        results: dict[str, float | None] = {}
        threads = [
            threading.Thread(target=lambda: results.__setitem__("silent", _closed_after(silent, b"", 30))),
            threading.Thread(
                target=lambda: results.__setitem__("slow", _closed_after(trickling, slow_head, 30))
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results["silent"] is not None and results["silent"] < 15, results
    assert results["slow"] is not None and results["slow"] < 15, results
    # The gateway still serves.
    probe = httpx.post(
        f"{stack.gateway_url}/predict", files={"file": ("p.png", images.solid(60))}, timeout=60
    )
    assert probe.status_code == 200
