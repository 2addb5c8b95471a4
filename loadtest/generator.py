"""The benchmark's load generator: single-image uploads to an HTTP `/predict`, open or closed loop.

- Open loop (`open_loop`): requests arrive as a Poisson process at a fixed rate, whatever the
  server does, as independent users would. Each latency is measured from the request's scheduled
  arrival, so a server that falls behind is charged for the wait (no coordinated omission).
- Closed loop (`closed_loop`): `concurrency` clients send back to back; what completes per second
  is the saturation throughput.

The same generator, the same uploads and the same multipart bodies drive every system under test,
so their numbers compare like with like. One asyncio loop with httpx keeps the client's share of
the 2 cores small; it is still on the same machine, which the report says.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from common.machine import OtherLoadMonitor
from loadtest.samples import MultipartUpload

PREDICT_PATH = "/predict"
REQUEST_TIMEOUT_SECONDS = 60.0
# An open loop that has this many requests waiting has lost: stop adding to the pile.
MAX_IN_FLIGHT = 512


@dataclass
class StepResult:
    """One measurement step: what was offered, what came back, how long it took."""

    mode: str  # "open" or "closed"
    seconds: float
    offered_rate: float | None = None
    concurrency: int | None = None
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    errors: Counter[str] = field(default_factory=Counter)
    other_load: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful requests per second of the step."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, percent: float) -> float:
        """A latency percentile over *all* requests: a failed request counts as infinitely slow."""
        if not self.latencies_ms and not self.failed:
            return math.nan
        values = np.array(self.latencies_ms + [math.inf] * self.failed)
        return float(np.percentile(values, percent, method="higher"))

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p95_ms(self) -> float:
        return self.percentile(95)

    def to_dict(self) -> dict[str, Any]:
        def number(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else round(value, 2)

        return {
            "mode": self.mode,
            "seconds": round(self.seconds, 2),
            "offered_rate": number(self.offered_rate),
            "concurrency": self.concurrency,
            "completed": self.completed,
            "failed": self.failed,
            "errors": dict(self.errors.most_common(5)),
            "throughput": number(self.throughput),
            "p50_ms": number(self.p50_ms),
            "p95_ms": number(self.p95_ms),
            "p99_ms": number(self.percentile(99)),
            "other_load": self.other_load,
        }


def new_client(base_url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=REQUEST_TIMEOUT_SECONDS,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def post_upload(client: httpx.AsyncClient, upload: MultipartUpload) -> str | None:
    """Send one upload; None when it succeeded, else a short reason."""
    try:
        response = await client.post(
            PREDICT_PATH, content=upload.body, headers={"Content-Type": upload.content_type}
        )
    except httpx.HTTPError as error:
        return type(error).__name__
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    if response.json().get("success") is not True:
        return "no success in the answer"
    return None


async def _open_loop(
    base_url: str, uploads: list[MultipartUpload], rate: float, seconds: float, seed: int
) -> StepResult:
    result = StepResult(mode="open", seconds=seconds, offered_rate=rate)
    chooser = random.Random(seed)
    in_flight = 0

    async def one(client: httpx.AsyncClient, upload: MultipartUpload, scheduled: float) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            error = await post_upload(client, upload)
        finally:
            in_flight -= 1
        if error is None:
            result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        else:
            result.errors[error] += 1

    async with new_client(base_url, MAX_IN_FLIGHT) as client:
        tasks = []
        started = time.perf_counter()
        arrival = started
        while True:
            arrival += chooser.expovariate(rate)
            if arrival - started >= seconds:
                break
            delay = arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                result.errors["client gave up: too many requests in flight"] += 1
                continue
            tasks.append(asyncio.create_task(one(client, chooser.choice(uploads), arrival)))
        await asyncio.gather(*tasks)
    return result


async def _closed_loop(
    base_url: str, uploads: list[MultipartUpload], concurrency: int, seconds: float, seed: int
) -> StepResult:
    result = StepResult(mode="closed", seconds=seconds, concurrency=concurrency)
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, index: int) -> None:
        chooser = random.Random(seed * 1000 + index)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            error = await post_upload(client, chooser.choice(uploads))
            finished = time.perf_counter()
            if finished > deadline:
                break  # only what completes inside the window counts
            if error is None:
                result.latencies_ms.append((finished - started) * 1000)
            else:
                result.errors[error] += 1

    async with new_client(base_url, concurrency) as client:
        await asyncio.gather(*(worker(client, index) for index in range(concurrency)))
    return result


def open_loop(
    base_url: str, uploads: list[MultipartUpload], rate: float, seconds: float, seed: int = 0
) -> StepResult:
    """Poisson arrivals at `rate` per second for `seconds`; waits for the last answers."""
    monitor = OtherLoadMonitor().start()
    result = asyncio.run(_open_loop(base_url, uploads, rate, seconds, seed))
    result.other_load = monitor.stop().to_dict()
    return result


def closed_loop(
    base_url: str, uploads: list[MultipartUpload], concurrency: int, seconds: float, seed: int = 0
) -> StepResult:
    """`concurrency` clients sending back to back for `seconds`."""
    monitor = OtherLoadMonitor().start()
    result = asyncio.run(_closed_loop(base_url, uploads, concurrency, seconds, seed))
    result.other_load = monitor.stop().to_dict()
    return result
