"""The canary verdict: quantiles from histogram buckets, deltas between gateway snapshots, PromQL."""

from __future__ import annotations

import json
import math
import urllib.parse

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from common import metric_names
from k8s import canary_watch
from k8s.canary_watch import (
    CanaryHealth,
    GatewayMetricsSource,
    PrometheusSource,
    Thresholds,
    histogram_quantile,
    judge,
)
from k8s.errors import MetricsError

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class FakeGateway:
    """A real prometheus_client registry with the metrics the rollout reads, as the gateway exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            metric_names.MODEL_REQUESTS,
            "model calls",
            ["model_name", "version_label", "outcome"],
            namespace=metric_names.GATEWAY_NAMESPACE,
            registry=self.registry,
        )
        self.latency = Histogram(
            metric_names.MODEL_REQUEST_SECONDS,
            "model call latency",
            ["model_name", "version_label"],
            namespace=metric_names.GATEWAY_NAMESPACE,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

    def call(self, label: str, seconds: float, ok: bool = True) -> None:
        self.requests.labels("ai_detector", label, "ok" if ok else "error").inc()
        self.latency.labels("ai_detector", label).observe(seconds)

    def page(self, _url: str = "") -> str:
        return generate_latest(self.registry).decode()


def test_quantile_interpolates_like_prometheus() -> None:
    # 100 observations: 50 under 0.1 s, 40 more under 0.2 s, 10 more under 0.5 s.
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.2 + 0.3 * (95 - 90) / 10)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    # Quantile in the +Inf bucket: the highest finite bound, as histogram_quantile answers.
    assert histogram_quantile(0.99, {0.1: 50.0, math.inf: 100.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None
    with pytest.raises(MetricsError):
        histogram_quantile(0.95, {0.1: 1.0})


def test_judge_needs_enough_requests_and_both_thresholds() -> None:
    thresholds = Thresholds(max_error_ratio=0.01, max_p95_seconds=0.2, min_requests=50)
    assert judge(CanaryHealth(100, 0, 0.05), thresholds).healthy
    slow = judge(CanaryHealth(100, 0, 0.3), thresholds)
    assert not slow.healthy and slow.conclusive and "p95 300 ms > 200 ms" in slow.reasons[0]
    failing = judge(CanaryHealth(100, 2, 0.05), thresholds)
    assert not failing.healthy and "error ratio 2.00% > 1.00%" in failing.reasons[0]
    quiet = judge(CanaryHealth(10, 0, 0.05), thresholds)
    assert not quiet.healthy and not quiet.conclusive


def test_gateway_source_counts_only_the_canary_since_the_start() -> None:
    gateway = FakeGateway()
    for _ in range(30):
        gateway.call("canary", 0.02)  # before the watch: not counted
        gateway.call("stable", 0.9)  # another label: never counted
    source = GatewayMetricsSource(["http://gateway/metrics"], "canary", fetch=gateway.page)
    source.start()
    for index in range(100):
        gateway.call("canary", 0.3 if index >= 90 else 0.02, ok=index != 0)
    health = source.health()
    assert health.requests == 100
    assert health.errors == 1
    # 90 calls in the 0.01-0.05 bucket, 10 in 0.25-0.5: p95 interpolates inside the latter.
    assert health.p95_seconds == pytest.approx(0.25 + 0.25 * (95 - 90) / 10)


def test_gateway_source_adds_up_every_gateway() -> None:
    gateways = {"http://a/metrics": FakeGateway(), "http://b/metrics": FakeGateway()}
    source = GatewayMetricsSource(list(gateways), "canary", fetch=lambda url: gateways[url].page())
    source.start()
    gateways["http://a/metrics"].call("canary", 0.02)
    gateways["http://b/metrics"].call("canary", 0.02, ok=False)
    health = source.health()
    assert (health.requests, health.errors) == (2, 1)


def test_a_gateway_without_per_label_metrics_is_an_error_not_a_healthy_canary() -> None:
    registry = CollectorRegistry()
    Counter("requests", "r", ["route"], namespace="aidetect_gateway", registry=registry).labels(
        "/predict"
    ).inc()
    source = GatewayMetricsSource(["x"], "canary", fetch=lambda _url: generate_latest(registry).decode())
    with pytest.raises(MetricsError, match="per version label"):
        source.start()


def test_prometheus_source_asks_for_the_window_watched() -> None:
    asked: list[str] = []
    answers = {"errors": 3.0, "requests": 200.0, "p95": 0.12}

    def fetch(url: str) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["query"][0]
        asked.append(query)
        key = (
            "p95" if "histogram_quantile" in query else "errors" if 'outcome="error"' in query else "requests"
        )
        return json.dumps({"status": "success", "data": {"result": [{"value": [0, str(answers[key])]}]}})

    now = [1000.0]
    source = PrometheusSource("http://prometheus:9090/", "canary", fetch=fetch, clock=lambda: now[0])
    source.start()
    now[0] += 125.2
    health = source.health()
    assert (health.requests, health.errors, health.p95_seconds) == (200.0, 3.0, 0.12)
    assert asked.pop(0) == "vector(1)"  # the reachability check of start()
    assert all('version_label="canary"' in query and "[126s]" in query for query in asked)
    assert asked[0].startswith("sum(increase(aidetect_gateway_model_requests_total{")


def test_prometheus_errors_are_reported() -> None:
    source = PrometheusSource(
        "http://p", "canary", fetch=lambda _url: json.dumps({"status": "error", "error": "bad"})
    )
    with pytest.raises(MetricsError, match="bad"):
        source.start()  # checked before the watch relies on it


def test_watch_stops_early_on_a_conclusively_bad_canary() -> None:
    gateway = FakeGateway()
    source = GatewayMetricsSource(["x"], "canary", fetch=gateway.page)
    now = [0.0]
    looks = []

    def sleep(seconds: float) -> None:
        now[0] += seconds
        for _ in range(30):
            gateway.call("canary", 0.4)  # slow: p95 over 200 ms

    verdict = canary_watch.watch(
        source, Thresholds(min_requests=50), 600, 10, report=looks.append, sleep=sleep, clock=lambda: now[0]
    )
    assert not verdict.healthy and verdict.conclusive
    assert len(looks) == 2 and now[0] == 20  # 30 requests were not enough to judge, 60 were


def test_watch_runs_the_whole_duration_for_a_good_canary() -> None:
    gateway = FakeGateway()
    source = GatewayMetricsSource(["x"], "canary", fetch=gateway.page)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        for _ in range(30):
            gateway.call("canary", 0.03)

    verdict = canary_watch.watch(
        source, Thresholds(min_requests=50), 60, 10, report=lambda _: None, sleep=sleep, clock=lambda: now[0]
    )
    assert verdict.healthy and now[0] == 60 and verdict.health.requests == 180
