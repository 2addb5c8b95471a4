"""A small load generator for the fault tests and the soak: uploads posted to the gateway from a
thread of its own while the test injects faults, every request recorded with its own id.

Closed loop (default): `concurrency` workers, each sending its next request when the last one
ended. Open loop (`rate` given): one request every 1/rate seconds whatever the answers, so a slow
server shows up as latency instead of as fewer requests (no coordinated omission); at most
`max_in_flight` at once, beyond which a request is counted as `skipped` (the generator, not the
server, was the limit).

Each request carries `x-request-id: <run>-<n>`, which the gateway logs with its status: a test
can tell a request the gateway accepted from one that never reached it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

Upload = tuple[str, bytes, str]  # filename, bytes, content type


@dataclass(frozen=True)
class Outcome:
    request_id: str
    started: float  # time.monotonic()
    finished: float
    status: int | None  # None: no HTTP answer (connection refused or dropped)
    transport_error: str = ""
    retry_after: str | None = None
    model_version: int | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def in_flight_at(self, moment: float) -> bool:
        return self.started <= moment < self.finished


@dataclass
class BackgroundLoad:
    url: str
    uploads: Sequence[Upload]
    concurrency: int = 4
    rate: float | None = None
    path: str = "/predict"
    timeout_seconds: float = 60.0
    max_in_flight: int = 256
    pause_after_transport_error: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: itertools.count = field(default_factory=itertools.count)

    # ------------------------------------------------------------ control

    def __enter__(self) -> BackgroundLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="load", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` more requests have finished (or the time is up)."""
        target = len(self.snapshot()) + count
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < target and time.monotonic() < deadline:
            time.sleep(0.05)

    # ------------------------------------------------------------ requests

    async def _main(self) -> None:
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_seconds, limits=limits
        ) as client:
            self._started.set()
            if self.rate is None:
                await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))
            else:
                await self._open_loop(client, self.rate)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            outcome = await self._one(client)
            if outcome.status is None:
                await asyncio.sleep(self.pause_after_transport_error)

    async def _open_loop(self, client: httpx.AsyncClient, rate: float) -> None:
        interval = 1.0 / rate
        in_flight: set[asyncio.Task[Outcome]] = set()
        next_send = time.monotonic()
        while not self._stop.is_set():
            delay = next_send - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send += interval
            if len(in_flight) >= self.max_in_flight:
                self.skipped += 1
                continue
            task = asyncio.create_task(self._one(client))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _one(self, client: httpx.AsyncClient) -> Outcome:
        number = next(self._counter)
        request_id = f"{self.run_id}-{number:08d}"
        filename, data, content_type = self.uploads[number % len(self.uploads)]
        started = time.monotonic()
        try:
            response = await client.post(
                self.path,
                files={"file": (filename, data, content_type)},
                headers={"x-request-id": request_id},
            )
        except httpx.HTTPError as error:
            outcome = Outcome(request_id, started, time.monotonic(), None, type(error).__name__)
        else:
            version = None
            if response.status_code == 200:
                version = response.json().get("model_version")
            outcome = Outcome(
                request_id,
                started,
                time.monotonic(),
                response.status_code,
                retry_after=response.headers.get("retry-after"),
                model_version=version,
            )
        with self._lock:
            self.outcomes.append(outcome)
        return outcome


def latency_summary(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds of the answered requests."""
    seconds = np.array([outcome.seconds for outcome in outcomes if outcome.status is not None])
    if seconds.size == 0:
        return {}
    return {
        f"p{percentile}_ms": round(float(np.percentile(seconds, percentile)) * 1000, 1)
        for percentile in (50, 95, 99)
    } | {"max_ms": round(float(seconds.max()) * 1000, 1)}
