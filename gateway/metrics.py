"""All of the gateway's Prometheus metrics, in one place, with bounded labels.

Labels are route templates, status classes, stage names, gRPC code names, model name and
version: never file names, request ids or other user input. Each app gets its own registry so
several apps (tests) never clash; GET /metrics serves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common import metric_names

NAMESPACE = metric_names.GATEWAY_NAMESPACE
STAGES = ("read", "decode", "resize", "provenance", "model_call", "total")
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a cached 256x256 decode (~1 ms) to a slow model call on a busy CPU (~10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPLOAD_BYTES_BUCKETS = tuple(float(2**power) for power in range(10, 26))  # 1 KiB .. 32 MiB
SCORE_BUCKETS = tuple(round(step * 0.05, 2) for step in range(1, 21))  # 0.05 .. 1.0


def status_class(status_code: int) -> str:
    return f"{status_code // 100}xx"


class GatewayMetrics:
    """The metrics of one gateway app, registered on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Every metric has the gateway's prefix and lives on this registry.
        counter = partial(Counter, namespace=NAMESPACE, registry=self.registry)
        gauge = partial(Gauge, namespace=NAMESPACE, registry=self.registry)
        histogram = partial(Histogram, namespace=NAMESPACE, registry=self.registry)
        self.requests = counter(
            "requests",
            "HTTP requests by route template and status class.",
            ["route", "status_class"],
        )
        self.in_flight = gauge(
            "requests_in_flight",
            "HTTP requests being handled now.",
        )
        self.stage_seconds = histogram(
            metric_names.STAGE_SECONDS,
            "Latency of each stage of a prediction: read (upload), decode, resize, provenance, model_call, "
            "total.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
        )
        self.upload_bytes = histogram(
            "upload_bytes",
            "Size of each uploaded file in bytes.",
            buckets=UPLOAD_BYTES_BUCKETS,
        )
        self.image_errors = counter(
            "image_errors",
            "Uploads refused, by HTTP status (400 not an image/corrupt, 413 too large, 415 unsupported).",
            ["status"],
        )
        self.upstream_errors = counter(
            "upstream_errors",
            "Failed calls to the model server by gRPC status code (each attempt, retries included).",
            ["code"],
        )
        self.upstream_retries = counter(
            "upstream_retries",
            "Calls to the model server retried after UNAVAILABLE.",
        )
        self.scores = histogram(
            "score",
            "Calibrated P(AI-generated) of each prediction: watch its shape for drift.",
            ["model_name", "model_version"],
            buckets=SCORE_BUCKETS,
        )
        self.predictions = counter(
            "predictions",
            "Predictions by verdict.",
            ["model_name", "model_version", "label"],
        )
        self.model_requests = counter(
            metric_names.MODEL_REQUESTS,
            "Model calls by version label and outcome (ok / error), once per request after retries.",
            ["model_name", "version_label", "outcome"],
        )
        self.model_request_seconds = histogram(
            metric_names.MODEL_REQUEST_SECONDS,
            "Duration of each model call (retries included) by version label.",
            ["model_name", "version_label"],
            buckets=LATENCY_BUCKETS,
        )
        self.rate_limit_store_errors = counter(
            "rate_limit_store_errors",
            "Requests let through because the rate-limit store could not be reached (fail open).",
        )
        # The canary share in force (read at scrape time): the rollout waits until every gateway
        # reports the new share before it judges the canary (k8s/rollout.py TrafficSwitch.settle).
        self.canary_percent = gauge(
            metric_names.CANARY_PERCENT,
            "Share (0-100) of unpinned requests this gateway sends to the canary label now.",
        )
        self.model_info = gauge(
            "model_info",
            "1 for each model version that answered, with the version label that routed to it.",
            ["model_name", "model_version", "version_label"],
        )

    def observe_model_request(
        self, model_name: str, version_label: str, outcome: str, seconds: float
    ) -> None:
        self.model_requests.labels(model_name=model_name, version_label=version_label, outcome=outcome).inc()
        self.model_request_seconds.labels(model_name=model_name, version_label=version_label).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def observe_request(self, route: str, status_code: int) -> None:
        self.requests.labels(route=route, status_class=status_class(status_code)).inc()

    def observe_prediction(self, model_name: str, model_version: int, score: float, label: str) -> None:
        version = str(model_version)
        self.scores.labels(model_name=model_name, model_version=version).observe(score)
        self.predictions.labels(model_name=model_name, model_version=version, label=label).inc()

    def observe_model_version(self, model_name: str, model_version: int, version_label: str) -> None:
        self.model_info.labels(
            model_name=model_name, model_version=str(model_version), version_label=version_label
        ).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StageTimings:
    """The stage latencies of one request: observed into the histogram and kept for its log line.

    read, model_call and total are observed once per request; decode and resize once per image.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.seconds: dict[str, float] = {}

    def record(self, stage: str, seconds: float) -> None:
        self.metrics.observe_stage(stage, seconds)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, time.perf_counter() - started)

    def summary(self) -> str:
        return " ".join(f"{stage}_ms={seconds * 1000:.1f}" for stage, seconds in self.seconds.items())
