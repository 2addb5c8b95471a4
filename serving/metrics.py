"""All metrics of the local model server, exposed in TF Serving's Prometheus text format.

TF Serving names its metrics like `/tensorflow/serving/request_count` and its exporter
(util/prometheus_exporter.cc) turns every character outside [a-zA-Z0-9_] into ':', so
Prometheus sees `:tensorflow:serving:request_count`. prometheus_client would add what TF
Serving's page does not have (`_total` and `_created` series, HELP lines), so this module keeps
its own small counters and histograms and writes the page the same way TF Serving does: a
`# TYPE` line per metric (no HELP), histogram buckets in TensorFlow's
semantics (bucket i counts values below limit i, the last is "+Inf"), values in TF's units
(microseconds for latencies).

Differences from TF Serving, on purpose: the batching_session size metrics are histograms
here (TF Serving keeps percentile samplers, which its exporter cannot print), and request
metrics for model names that are not configured share one label value, `__unknown__`, so
clients cannot grow the label set.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from common import metric_names

UNKNOWN_MODEL_LABEL = "__unknown__"
DEFAULT_PROMETHEUS_PATH = metric_names.TF_SERVING_METRICS_PATH
_DOUBLE_MAX = 1.7976931348623157e308


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> list[float]:
    """TensorFlow's monitoring::Buckets::Exponential."""
    return [scale * growth_factor**index for index in range(bucket_count)]


def _format_number(value: float) -> str:
    # absl::StrCat prints doubles with six significant digits ("%g").
    return f"{value:g}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _format_labels(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(
        f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )


@dataclass
class Counter:
    name: str
    label_names: tuple[str, ...]
    kind: str = "counter"
    _values: dict[tuple[str, ...], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def increment(self, *label_values: str, amount: float = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0)

    def render(self) -> list[str]:
        lines = [f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            for label_values, value in sorted(self._values.items()):
                lines.append(f"{self.name}{{{_format_labels(self.label_names, label_values)}}} {int(value)}")
        return lines


class Gauge(Counter):
    def __init__(self, name: str, label_names: tuple[str, ...]) -> None:
        super().__init__(name, label_names, kind="gauge")


@dataclass
class _HistogramCell:
    bucket_counts: list[int]
    total: float = 0.0


@dataclass
class Histogram:
    name: str
    label_names: tuple[str, ...]
    bucket_limits: list[float]
    _cells: dict[tuple[str, ...], _HistogramCell] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, value: float, *label_values: str) -> None:
        # TF's Histogram: the bucket is the first limit strictly above the value; DBL_MAX closes the list.
        index = bisect.bisect_right(self.bucket_limits, value)
        with self._lock:
            cell = self._cells.get(label_values)
            if cell is None:
                cell = self._cells[label_values] = _HistogramCell([0] * (len(self.bucket_limits) + 1))
            cell.bucket_counts[index] += 1
            cell.total += value

    def count_and_sum(self, *label_values: str) -> tuple[int, float]:
        with self._lock:
            cell = self._cells.get(label_values)
            return (sum(cell.bucket_counts), cell.total) if cell else (0, 0.0)

    def render(self) -> list[str]:
        lines = [f"# TYPE {self.name} histogram"]
        with self._lock:
            for label_values, cell in sorted(self._cells.items()):
                labels = _format_labels(self.label_names, label_values)
                prefix = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
                cumulative = 0
                for index, count in enumerate(cell.bucket_counts):
                    cumulative += count
                    limit = (
                        _format_number(self.bucket_limits[index])
                        if index < len(self.bucket_limits)
                        else "+Inf"
                    )
                    lines.append(f'{prefix}le="{limit}"}} {cumulative}')
                lines.append(f"{self.name}_sum{{{labels}}} {_format_number(cell.total)}")
                lines.append(f"{self.name}_count{{{labels}}} {cumulative}")
        return lines


class ServerMetrics:
    """Every metric the local server exports; one instance per server, passed to whoever records."""

    def __init__(self) -> None:
        latency_buckets = exponential_buckets(10, 1.8, 33)  # TF Serving: microseconds, up to ~20 minutes
        # Batch sizes: TF's padding_size_v2 buckets [1, 2, 4, ..., 8192].
        size_buckets = exponential_buckets(1, 2, 14)
        self.request_count = Counter(metric_names.SERVER_REQUEST_COUNT, ("model_name", "status"))
        self.request_latency = Histogram(
            metric_names.SERVER_REQUEST_LATENCY, ("model_name", "API", "entrypoint"), latency_buckets
        )
        self.runtime_latency = Histogram(
            metric_names.SERVER_RUNTIME_LATENCY, ("model_name", "API", "runtime"), latency_buckets
        )
        self.queuing_latency = Histogram(
            metric_names.SERVER_QUEUING_LATENCY,
            ("thread_pool_name",),
            exponential_buckets(100, 1.2, 52),
        )
        self.input_batch_size = Histogram(metric_names.SERVER_INPUT_BATCH_SIZE, (), size_buckets)
        self.processed_batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size", (), size_buckets
        )
        self.padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size", ("execution_batch_size",), size_buckets
        )
        self.load_attempt_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", ("model_path", "status")
        )
        self.load_latency = Counter(":tensorflow:cc:saved_model:load_latency", ("model_path",))
        # Ours (no TF Serving equivalent): requests being handled now, by entrypoint (GRPC, REST).
        self.in_flight_requests = Gauge("local_model_server_in_flight_requests", ("entrypoint",))
        self._all: list[Counter | Histogram] = [
            self.load_attempt_count,
            self.load_latency,
            self.input_batch_size,
            self.padding_size,
            self.processed_batch_size,
            self.queuing_latency,
            self.request_count,
            self.request_latency,
            self.runtime_latency,
            self.in_flight_requests,
        ]

    def record_request(
        self, model_name: str | None, status_name: str, latency_seconds: float, *, api: str, entrypoint: str
    ) -> None:
        label = model_name or UNKNOWN_MODEL_LABEL
        self.request_count.increment(label, status_name)
        self.request_latency.observe(latency_seconds * 1e6, label, api, entrypoint)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- monitoring.config


def _monitoring_config_class() -> type:
    """TF Serving's MonitoringConfig (config/monitoring_config.proto), built in a private pool:
    the tensorflow-serving-api wheel does not ship this proto."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="local_model_server/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, label=1)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=1,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    message_class: type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )
    return message_class


MonitoringConfig = _monitoring_config_class()


def prometheus_path_from_monitoring_config(text: str) -> str | None:
    """The path to serve Prometheus text on, or None when the config does not enable it."""
    config = MonitoringConfig()
    text_format.Parse(text, config)
    if not config.prometheus_config.enable:
        return None
    path: str = config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
    return path
