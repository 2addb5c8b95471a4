"""Where the time of a request goes, from the services' own Prometheus metrics.

Both metric pages are scraped before and after a measurement step; the differences of each
histogram's `_sum` and `_count` give the mean of each stage over exactly that step:

- gateway (`aidetect_gateway_stage_seconds{stage}`): read (upload), decode, resize, provenance,
  model_call, total;
- model server (TF Serving's names): request_latency (the server's whole Predict), queuing_latency
  (waiting for a batch), runtime_latency (one model run, per batch), input_batch_size.

Derived: gRPC + transport = model_call - request_latency; server overhead (request conversion,
validation) = request_latency - queuing - runtime.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common import metric_names

GATEWAY_STAGE_METRIC = metric_names.GATEWAY_STAGE_SECONDS
SERVER_REQUEST_LATENCY = metric_names.SERVER_REQUEST_LATENCY
SERVER_QUEUING_LATENCY = metric_names.SERVER_QUEUING_LATENCY
SERVER_RUNTIME_LATENCY = metric_names.SERVER_RUNTIME_LATENCY
SERVER_BATCH_SIZE = metric_names.SERVER_INPUT_BATCH_SIZE
MICROSECONDS_PER_MILLISECOND = 1000.0

# (sum, count) of each histogram, keyed by (metric name, label "stage" or "" when unlabelled).
Snapshot = dict[tuple[str, str], tuple[float, float]]


def scrape(url: str, timeout_seconds: float = 10.0) -> Snapshot:
    """Sums and counts of every histogram on a Prometheus text page, summed over labels other than `stage`."""
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
        text = response.read().decode()
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix, index in (("_sum", 0), ("_count", 1)):
                if sample.name.endswith(suffix):
                    key = (sample.name.removesuffix(suffix), sample.labels.get("stage", ""))
                    totals[key][index] += float(sample.value)
    return {key: (values[0], values[1]) for key, values in totals.items()}


def mean_between(before: Snapshot, after: Snapshot, metric: str, stage: str = "") -> tuple[float, float]:
    """(mean, count) of a histogram's observations made between two snapshots."""
    total_before, count_before = before.get((metric, stage), (0.0, 0.0))
    total_after, count_after = after.get((metric, stage), (0.0, 0.0))
    count = count_after - count_before
    return ((total_after - total_before) / count if count > 0 else float("nan")), count


@dataclass(frozen=True)
class StageBreakdown:
    """Mean milliseconds per request of each stage during one step (NaN when not measured)."""

    read: float
    decode: float
    resize: float
    provenance: float
    model_call: float
    gateway_total: float
    server_request: float
    server_queue: float
    server_runtime_per_batch: float
    mean_batch_size: float
    requests: float

    @property
    def grpc_and_transport(self) -> float:
        return self.model_call - self.server_request

    @property
    def server_overhead(self) -> float:
        return self.server_request - self.server_queue - self.server_runtime_per_batch

    @property
    def gateway_other(self) -> float:
        return self.gateway_total - self.read - self.decode - self.resize - self.provenance - self.model_call

    def to_dict(self) -> dict[str, Any]:
        values = {
            "read": self.read,
            "decode": self.decode,
            "resize": self.resize,
            "provenance": self.provenance,
            "model_call": self.model_call,
            "gateway_total": self.gateway_total,
            "gateway_other": self.gateway_other,
            "grpc_and_transport": self.grpc_and_transport,
            "server_request": self.server_request,
            "server_queue": self.server_queue,
            "server_runtime_per_batch": self.server_runtime_per_batch,
            "server_overhead": self.server_overhead,
            "mean_batch_size": self.mean_batch_size,
            "requests": self.requests,
        }
        return {key: round(value, 3) for key, value in values.items()}


def breakdown(
    gateway_before: Snapshot, gateway_after: Snapshot, server_before: Snapshot, server_after: Snapshot
) -> StageBreakdown:
    def gateway_ms(stage: str) -> tuple[float, float]:
        mean, count = mean_between(gateway_before, gateway_after, GATEWAY_STAGE_METRIC, stage)
        return mean * 1000.0, count

    def server_ms(metric: str) -> float:
        return mean_between(server_before, server_after, metric)[0] / MICROSECONDS_PER_MILLISECOND

    total, requests = gateway_ms("total")
    # Without server-side batching nothing queues and every run is one request.
    batched = mean_between(server_before, server_after, SERVER_QUEUING_LATENCY)[1] > 0
    return StageBreakdown(
        read=gateway_ms("read")[0],
        decode=gateway_ms("decode")[0],
        resize=gateway_ms("resize")[0],
        provenance=gateway_ms("provenance")[0],
        model_call=gateway_ms("model_call")[0],
        gateway_total=total,
        server_request=server_ms(SERVER_REQUEST_LATENCY),
        server_queue=server_ms(SERVER_QUEUING_LATENCY) if batched else 0.0,
        server_runtime_per_batch=server_ms(SERVER_RUNTIME_LATENCY),
        mean_batch_size=mean_between(server_before, server_after, SERVER_BATCH_SIZE)[0] if batched else 1.0,
        requests=requests,
    )
