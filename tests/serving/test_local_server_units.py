"""The local model server's parts in-process: tensor conversion, batching, version policy, metrics,
flags, the REST JSON forms, and the LOADING -> UNAVAILABLE path through a real in-process server.

The only fake is at the edge: a runtime that computes with numpy (and can be held in LOADING).
Its model folders carry a real `saved_model.pb` (a SavedModel proto written by hand), so the
signature reading, metadata and validation code run for real.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from common import model_config
from serving import server as server_module
from serving.batching import QUEUE_FULL_MESSAGE, BatchingOptions, BatchScheduler
from serving.errors import (
    DataLossError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from serving.grpc_api import parse_channel_arguments
from serving.metrics import Histogram, ServerMetrics, prometheus_path_from_monitoring_config
from serving.model_manager import ModelManager, VersionState, read_tfrecords
from serving.rest_api import inputs_from_json, outputs_to_json
from serving.runtime import (
    SignatureSpec,
    TensorSpec,
    read_signatures,
)
from serving.server_config import aspired_versions, map_base_path, parse_prefix_map, validate_config
from serving.settings import get_settings
from tests.serving.local_server_support import Client, config_text, eventually, free_port

# ---------------------------------------------------------------- a numpy runtime at the edge

FEATURES = 3


def write_saved_model_proto(version_path: Path) -> None:
    """A saved_model.pb with one signature: x float32 [-1, 3] -> total float32 [-1], double [-1, 3]."""
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    meta_graph = saved_model.meta_graphs.add()
    meta_graph.meta_info_def.tags.append("serve")
    signature = meta_graph.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    for target, alias, dims in (
        (signature.inputs, "x", [-1, FEATURES]),
        (signature.outputs, "total", [-1]),
        (signature.outputs, "double", [-1, FEATURES]),
    ):
        info = meta_graph_pb2.TensorInfo(name=f"{alias}:0", dtype=types_pb2.DT_FLOAT)
        for size in dims:
            info.tensor_shape.dim.add(size=size)
        target[alias].CopyFrom(info)
    meta_graph.signature_def["__saved_model_init_op"].outputs["__saved_model_init_op"].name = "NoOp"
    version_path.mkdir(parents=True, exist_ok=True)
    (version_path / "saved_model.pb").write_bytes(saved_model.SerializeToString())


class NumpyRuntime:
    """Sums the features; loading can be held (`hold_loads`) or made to fail (`failures_left`)."""

    hold_loads = threading.Event()
    loads_started = threading.Event()
    failures_left = 0

    def __init__(self, version_path: Path) -> None:
        NumpyRuntime.loads_started.set()
        if not NumpyRuntime.hold_loads.wait(timeout=60):
            raise TimeoutError("test never released the load")
        if NumpyRuntime.failures_left > 0:
            NumpyRuntime.failures_left -= 1
            raise OSError("simulated flaky storage")
        self._signatures = read_signatures(version_path)
        self.version = int(version_path.name)

    def signatures(self) -> dict[str, SignatureSpec]:
        return self._signatures

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        return {"total": x.sum(axis=1) + self.version * 1000, "double": x * 2}

    def close(self) -> None:
        pass


@pytest.fixture
def release_loads() -> Iterator[None]:
    NumpyRuntime.hold_loads.set()
    NumpyRuntime.failures_left = 0
    yield
    NumpyRuntime.hold_loads.set()
    NumpyRuntime.failures_left = 0


def one_model_config(base_path: str, labels: dict[str, int] | None = None, policy: str = "") -> str:
    return config_text([{"name": "demo", "base_path": base_path, "labels": labels or {}, "policy": policy}])


# ---------------------------------------------------------------- batching


def test_batching_options_read_tf_serving_text() -> None:
    options = BatchingOptions.from_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 500 } max_enqueued_batches { value: 3 }\n"
        "num_batch_threads { value: 2 } thread_pool_name { value: 'pool' } allowed_batch_sizes: 4\n"
        "allowed_batch_sizes: 8 pad_variable_length_inputs: true"
    )
    assert options == BatchingOptions(8, 500, 3, 2, "pool", (4, 8))
    assert [options.padded_size(size) for size in (1, 4, 5, 8)] == [4, 4, 8, 8]
    repository_config = Path(__file__).resolve().parents[2] / "serving" / "batching.cpu.config"
    if repository_config.exists():
        assert BatchingOptions.from_file(repository_config).max_batch_size > 0
    # Fields of newer TF Serving versions are ignored with a warning rather than refused.
    assert (
        BatchingOptions.from_text(
            "max_batch_size { value: 4 } enable_large_batch_splitting: true"
        ).max_batch_size
        == 4
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2",
            "monotonically increasing",
        ),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
    ],
)
def test_batching_options_refuse_what_tf_serving_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingOptions.from_text(text)


@pytest.fixture
def scheduler_factory() -> Iterator[Callable[..., BatchScheduler]]:
    started: list[BatchScheduler] = []

    def make(**options: object) -> BatchScheduler:
        scheduler = BatchScheduler(BatchingOptions(**options), ServerMetrics())  # type: ignore[arg-type]
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.stop()


def test_a_full_batch_runs_at_once_and_each_caller_gets_its_rows(
    scheduler_factory: Callable[..., BatchScheduler],
) -> None:
    # The timeout is far away: the batch runs because it is full, not because time passed.
    scheduler = scheduler_factory(max_batch_size=4, batch_timeout_micros=60_000_000, num_batch_threads=1)
    batch_sizes: list[int] = []

    def runner(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 10}

    results: dict[int, np.ndarray] = {}

    def call(index: int) -> None:
        results[index] = scheduler.submit("key", {"x": np.array([[index]])}, runner)["y"]

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert batch_sizes == [4]
    assert {index: value.tolist() for index, value in results.items()} == {i: [[i * 10]] for i in range(4)}


def test_batches_are_padded_to_allowed_sizes(scheduler_factory: Callable[..., BatchScheduler]) -> None:
    scheduler = scheduler_factory(max_batch_size=4, allowed_batch_sizes=(2, 4), num_batch_threads=1)
    seen: list[int] = []

    def runner(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1}

    assert scheduler.submit("key", {"x": np.array([5, 6, 7])}, runner)["y"].tolist() == [6, 7, 8]
    assert seen == [4]  # 3 rows padded to 4, the padding dropped from the answer
    assert scheduler._metrics.padding_size.count_and_sum("4") == (1, 1.0)


def test_full_queue_answers_unavailable(scheduler_factory: Callable[..., BatchScheduler]) -> None:
    scheduler = scheduler_factory(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    running, release = threading.Event(), threading.Event()

    def runner(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        running.set()
        release.wait(timeout=30)
        return {"y": inputs["x"]}

    first = threading.Thread(target=scheduler.submit, args=("key", {"x": np.array([1])}, runner))
    first.start()
    assert running.wait(timeout=30)  # the only batch thread is busy with the first request
    second = threading.Thread(target=scheduler.submit, args=("key", {"x": np.array([2])}, runner))
    second.start()
    eventually(lambda: len(scheduler._queues["key"].batches) == 1, "second request queued")
    with pytest.raises(UnavailableError, match=QUEUE_FULL_MESSAGE):
        scheduler.submit("key", {"x": np.array([3])}, runner)
    release.set()
    first.join()
    second.join()


def test_batch_errors_and_size_limits(scheduler_factory: Callable[..., BatchScheduler]) -> None:
    scheduler = scheduler_factory(max_batch_size=2, num_batch_threads=1)

    def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("kaboom")

    with pytest.raises(InternalError, match="kaboom"):
        scheduler.submit("key", {"x": np.array([1])}, broken)
    with pytest.raises(InvalidArgumentError, match="Task size 3 is larger than maximum input batch size 2"):
        scheduler.submit("key", {"x": np.array([1, 2, 3])}, broken)
    with pytest.raises(InvalidArgumentError, match="equal 0th-dimension size"):
        scheduler.submit("key", {"x": np.array([1]), "z": np.array([1, 2])}, broken)


def test_stop_runs_what_is_queued() -> None:
    scheduler = BatchScheduler(
        BatchingOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1),
        ServerMetrics(),
    )
    scheduler.start()
    result: dict[str, np.ndarray] = {}
    caller = threading.Thread(
        target=lambda: result.update(scheduler.submit("key", {"x": np.array([4])}, lambda inputs: inputs))
    )
    caller.start()
    eventually(lambda: scheduler._queues.get("key") and scheduler._queues["key"].batches, "request queued")
    scheduler.stop()  # does not wait a minute for company: shutting down runs the batch now
    caller.join()
    assert result["x"].tolist() == [4]


# ---------------------------------------------------------------- versions and config


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", {9}),
        ("latest { num_versions: 2 }", {5, 9}),
        ("all {}", {1, 5, 9}),
        ("specific { versions: 1 versions: 4 }", {1}),
    ],
)
def test_version_policies(policy: str, expected: set[int]) -> None:
    config = model_config.parse(one_model_config("/m", policy=policy))
    on_disk = {version: Path(str(version)) for version in (1, 5, 9)}
    assert aspired_versions(config.model_config_list.config[0], on_disk) == expected


def test_prefix_map() -> None:
    prefix_map = parse_prefix_map("/models=/srv/models,/models/special=/fast")
    assert map_base_path("/models/ai_detector", prefix_map) == Path("/srv/models/ai_detector")
    assert map_base_path("/models/special/x", prefix_map) == Path("/fast/x")
    # With a map, nothing outside the mapped prefixes, and nothing escaping their folders (issue 13).
    for outside in ("/modelsX/y", "/etc", "/models/../etc", "relative/path"):
        with pytest.raises(InvalidArgumentError, match="base path"):
            map_base_path(outside, prefix_map)
    assert map_base_path("/anywhere/x", []) == Path("/anywhere/x")  # no map: as given (TF Serving)
    with pytest.raises(ValueError, match="PREFIX=FOLDER"):
        parse_prefix_map("/models")


def test_config_validation() -> None:
    duplicate = model_config.parse(
        config_text([{"name": "a", "base_path": "/a"}, {"name": "a", "base_path": "/b"}])
    )
    with pytest.raises(InvalidArgumentError, match="Illegal to list model a multiple times"):
        validate_config(duplicate)
    validate_config(model_config.ModelServerConfig())  # an empty config file: no models (TF Serving)
    custom = model_config.ModelServerConfig()
    custom.custom_model_config.Pack(model_config.ModelServerConfig())
    with pytest.raises(InvalidArgumentError, match="Only ModelConfigList"):
        validate_config(custom)
    # ServerCore's checks (issue 18): absolute paths or URIs only; not both platform fields.
    with pytest.raises(
        InvalidArgumentError, match=r"to have an absolute path or URI; got base_path\(\)=models/a"
    ):
        validate_config(model_config.parse(config_text([{"name": "a", "base_path": "models/a"}])))
    both = model_config.parse('model_config_list { config { name: "a" base_path: "/a" model_type: TENSORFLOW '
                              'model_platform: "tensorflow" } }')  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="Illegal setting both model_type"):
        validate_config(both)
    assert map_base_path("file:///srv/models/a", []) == Path("/srv/models/a")  # file:// URIs as paths


def make_manager(**options: object) -> ModelManager:
    defaults: dict[str, object] = {
        "runtime_factory": NumpyRuntime,
        "metrics": ServerMetrics(),
        "file_system_poll_seconds": 0,
        "load_retry_interval_seconds": 0,
    }
    return ModelManager(**{**defaults, **options})  # type: ignore[arg-type]


def test_flaky_loads_are_retried(tmp_path: Path, release_loads: None) -> None:
    write_saved_model_proto(tmp_path / "demo" / "1")
    NumpyRuntime.failures_left = 2
    manager = make_manager(max_load_retries=2)
    try:
        manager.apply_config(model_config.parse(one_model_config(str(tmp_path / "demo"))))
        assert [status.state for status in manager.version_statuses("demo")] == [VersionState.AVAILABLE]
        path = str(tmp_path / "demo" / "1")
        assert manager._metrics.load_attempt_count.value(path, "fail") == 2
        assert manager._metrics.load_attempt_count.value(path, "success") == 1
    finally:
        manager.stop()


def test_a_version_in_use_is_unloaded_only_when_its_requests_end(tmp_path: Path, release_loads: None) -> None:
    write_saved_model_proto(tmp_path / "demo" / "1")
    manager = make_manager()
    try:
        manager.apply_config(model_config.parse(one_model_config(str(tmp_path / "demo"))))
        with manager.servable("demo") as held:
            write_saved_model_proto(tmp_path / "demo" / "2")
            manager.poll_file_system()
            manager.wait_for(lambda: held.state == VersionState.UNLOADING, 30)
            with manager.servable("demo") as newest:
                assert newest.version == 2  # new requests already go to version 2
            _, outputs = manager.predict(held, "", {"x": np.ones((1, FEATURES), np.float32)})
            assert outputs["total"].tolist() == [1003.0]  # version 1 still answers its request
            assert held.state == VersionState.UNLOADING
        assert manager.wait_for(lambda: held.state == VersionState.END, 30)
        with pytest.raises(NotFoundError, match=r"Specific\(demo, 1\)"):
            manager.servable("demo", version=1).__enter__()
    finally:
        manager.stop()


def test_a_label_on_a_version_that_does_not_load_fails_the_start(tmp_path: Path, release_loads: None) -> None:
    write_saved_model_proto(tmp_path / "demo" / "1")
    manager = make_manager()
    failures: list[Exception] = []
    done = threading.Event()
    manager.add_listener(lambda: None)
    try:
        manager.start(
            model_config.parse(one_model_config(str(tmp_path / "demo"), labels={"stable": 2})),
            on_fatal=lambda error: (failures.append(error), done.set()),
        )
        assert done.wait(30)
        assert isinstance(failures[0], FailedPreconditionError)
        assert "version 2 of model demo" in failures[0].message
    finally:
        manager.stop()


def test_moving_a_label_to_an_unavailable_version_is_refused_even_when_allowed(
    tmp_path: Path, release_loads: None
) -> None:
    """TF Serving (issue 18): --allow_version_labels_for_unavailable_models lets a new label name a
    version that is not available, but moving an existing label there is FAILED_PRECONDITION."""
    write_saved_model_proto(tmp_path / "demo" / "1")
    manager = make_manager(allow_labels_for_unavailable_models=True)
    base = str(tmp_path / "demo")
    try:
        manager.apply_config(model_config.parse(one_model_config(base, labels={"stable": 1})))
        manager.apply_config(model_config.parse(one_model_config(base, labels={"stable": 1, "canary": 7})))
        with pytest.raises(FailedPreconditionError, match="version 7 of model demo"):
            manager.apply_config(
                model_config.parse(one_model_config(base, labels={"stable": 7, "canary": 7}))
            )
        with manager.servable("demo", label="stable") as servable:
            assert servable.version == 1  # the refused config left the labels as they were
    finally:
        manager.stop()


def test_an_empty_model_name_is_an_invalid_argument(tmp_path: Path, release_loads: None) -> None:
    manager = make_manager()
    try:
        for call in (lambda: manager.servable("").__enter__(), lambda: manager.version_statuses("")):
            with pytest.raises(InvalidArgumentError, match="Missing model name"):
                call()
    finally:
        manager.stop()


def test_warmup_files_are_read_with_their_checksums(tmp_path: Path) -> None:
    """TF Serving's warmup reader checks record CRCs: a foreign file is DATA_LOSS (not a huge read)."""
    import tensorflow as tf

    foreign = tmp_path / "not-a-tfrecord"
    foreign.write_bytes(b"\xff" * 64)
    with pytest.raises(DataLossError):
        list(read_tfrecords(foreign))
    good = tmp_path / "records"
    with tf.io.TFRecordWriter(str(good)) as writer:
        writer.write(b"one")
        writer.write(b"two")
    assert list(read_tfrecords(good)) == [b"one", b"two"]
    damaged = tmp_path / "damaged"
    data = bytearray(good.read_bytes())
    data[13] ^= 0xFF  # a byte of the first record's data: its CRC no longer matches
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataLossError):
        list(read_tfrecords(damaged))


# ---------------------------------------------------------------- a whole server, held in LOADING


@pytest.fixture
def loading_server(tmp_path: Path) -> Iterator[tuple[server_module.ModelServer, Client, str]]:
    NumpyRuntime.hold_loads.clear()
    NumpyRuntime.loads_started.clear()
    write_saved_model_proto(tmp_path / "models" / "demo" / "1")
    config_file = tmp_path / "models.config"
    config_file.write_text(one_model_config("/models/demo", labels={"stable": 1}))
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    settings = get_settings(
        host="127.0.0.1",
        port=free_port(),
        rest_api_port=free_port(),
        model_config_file=config_file,
        model_base_path_prefix_map=f"/models={tmp_path / 'models'}",
        monitoring_config_file=monitoring,
        shutdown_grace_seconds=5,
    )
    model_server = server_module.ModelServer(settings, runtime_factory=NumpyRuntime)
    model_server.start()
    client = Client(f"127.0.0.1:{settings.port}")
    try:
        yield model_server, client, f"http://127.0.0.1:{settings.rest_api_port}"
    finally:
        NumpyRuntime.hold_loads.set()
        client.close()
        model_server.stop()


def test_requests_while_loading_get_unavailable_then_succeed(
    loading_server: tuple[server_module.ModelServer, Client, str],
) -> None:
    _, client, rest_url = loading_server
    assert NumpyRuntime.loads_started.wait(30)
    x = {"x": np.ones((2, FEATURES), np.float32)}
    with pytest.raises(grpc.RpcError) as caught:
        client.predict(x, model_name="demo", signature_name="")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as caught:
        client.predict(x, model_name="demo", label="stable")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # labels wait for the first config
    assert client.status("demo") == {1: ("LOADING", 0, "")}
    health = health_pb2_grpc.HealthStub(client.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    response = httpx.post(f"{rest_url}/v1/models/demo:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 503
    assert set(response.json()) == {"error"}

    NumpyRuntime.hold_loads.set()
    eventually(
        lambda: (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        ),
        "health SERVING",
    )
    reply, outputs = client.predict(x, model_name="demo", label="stable", signature_name="")
    assert reply.model_spec.version.value == 1
    assert outputs["total"].tolist() == [1003.0, 1003.0]
    columnar = httpx.post(f"{rest_url}/v1/models/demo:predict", json={"inputs": [[1, 2, 3]]}).json()
    assert columnar == {"outputs": {"double": [[2.0, 4.0, 6.0]], "total": [1006.0]}}
    metrics = httpx.get(f"{rest_url}/monitoring/prometheus/metrics").text  # monitoring.config's default path
    assert (
        ':tensorflow:serving:request_count{model_name="demo",status="UNAVAILABLE"} 3' in metrics
    )  # 2 gRPC + REST


# ---------------------------------------------------------------- REST JSON forms, metrics text, flags


SPEC = SignatureSpec(
    method_name="tensorflow/serving/predict",
    inputs={
        "image_bytes": TensorSpec(types_pb2.DT_STRING, (-1,)),
        "scale": TensorSpec(types_pb2.DT_FLOAT, (-1,)),
    },
    outputs={},
)
ONE_INPUT = SignatureSpec("tensorflow/serving/predict", {"x": TensorSpec(types_pb2.DT_UINT8, (-1, 2))}, {})


def test_rest_request_forms() -> None:
    rows, row_format = inputs_from_json({"instances": [[1, 2], [3, 4]]}, ONE_INPUT)
    assert row_format and rows["x"].dtype == np.uint8 and rows["x"].tolist() == [[1, 2], [3, 4]]
    named, _ = inputs_from_json({"instances": [{"image_bytes": {"b64": "aGk="}, "scale": 2}]}, SPEC)
    assert named["image_bytes"].tolist() == [b"hi"] and named["scale"].dtype == np.float32
    columns, row_format = inputs_from_json({"inputs": {"image_bytes": ["plain"], "scale": [1.5]}}, SPEC)
    assert not row_format and columns["image_bytes"].tolist() == [b"plain"]
    for bad, message in (
        ({"instances": [[1, 2], [3]]}, "ragged"),
        ({"instances": [[1, 256]]}, "out of range"),
        ({"instances": [{"image_bytes": {"b64": "!!"}, "scale": 1}]}, "base64"),
        ({"inputs": [1], "instances": [1]}, "exactly one"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            inputs_from_json(bad, SPEC if "image_bytes" in str(bad) else ONE_INPUT)


def test_rest_response_forms() -> None:
    outputs = {"p": np.array([0.3, 0.7], np.float32), "label": np.array([0, 1], np.int32)}
    assert outputs_to_json(outputs, row_format=True) == {
        "predictions": [{"p": 0.3, "label": 0}, {"p": 0.7, "label": 1}]
    }
    assert outputs_to_json({"p": outputs["p"]}, row_format=True) == {"predictions": [0.3, 0.7]}
    assert outputs_to_json(outputs, row_format=False) == {"outputs": {"p": [0.3, 0.7], "label": [0, 1]}}
    assert outputs_to_json({"raw_bytes": np.array([b"hi"], dtype=object)}, False) == {
        "outputs": [{"b64": "aGk="}]
    }


def test_metrics_text_matches_tf_serving_exporter() -> None:
    histogram = Histogram(":tensorflow:serving:x", ("model_name",), [10.0, 18.0])
    histogram.observe(12, "m")
    histogram.observe(1e9, "m")
    assert histogram.render() == [
        "# TYPE :tensorflow:serving:x histogram",
        ':tensorflow:serving:x_bucket{model_name="m",le="10"} 0',
        ':tensorflow:serving:x_bucket{model_name="m",le="18"} 1',
        ':tensorflow:serving:x_bucket{model_name="m",le="+Inf"} 2',
        ':tensorflow:serving:x_sum{model_name="m"} 1e+09',
        ':tensorflow:serving:x_count{model_name="m"} 2',
    ]
    metrics = ServerMetrics()
    metrics.record_request(None, "NOT_FOUND", 0.001, api="Predict", entrypoint="GRPC")
    assert (
        ':tensorflow:serving:request_count{model_name="__unknown__",status="NOT_FOUND"} 1' in metrics.render()
    )
    assert (
        prometheus_path_from_monitoring_config("prometheus_config { enable: true }")
        == "/monitoring/prometheus/metrics"
    )
    assert prometheus_path_from_monitoring_config('prometheus_config { enable: false path: "/x" }') is None


def test_flags_use_tf_serving_names() -> None:
    parsed = server_module.parse_arguments(
        ["--port=9000", "--rest_api_port", "0", "--enable_batching", "--enable_model_warmup=false"]
    )
    assert parsed == {
        "port": "9000",
        "rest_api_port": "0",
        "enable_batching": True,
        "enable_model_warmup": False,
    }
    settings = get_settings(**parsed)
    assert (settings.port, settings.rest_api_port, settings.enable_batching) == (9000, 0, True)
    # Every TF Serving flag is accepted (issue 18): the ones with a local meaning become settings,
    # the others are accepted without effect (and logged), TFLite switched on is refused.
    parsed_line = server_module.parse_command_line(
        ["--grpc_channel_arguments=grpc.max_connection_age_ms=2000", "--per_process_gpu_memory_fraction=0.5",
         "--flush_filesystem_caches", "--prefer_tflite_model=false"]
    )  # fmt: skip
    assert parsed_line.overrides == {"grpc_channel_arguments": "grpc.max_connection_age_ms=2000"}
    assert parsed_line.without_effect == {
        "per_process_gpu_memory_fraction": "0.5",
        "flush_filesystem_caches": "true",
        "prefer_tflite_model": "false",
    }
    every_flag = [f"--{name}=1" for name in server_module.tf_serving_flags() if name != "prefer_tflite_model"]
    assert server_module.parse_command_line(every_flag)  # TF Serving's whole flag set parses
    with pytest.raises(SystemExit):
        server_module.parse_command_line(["--prefer_tflite_model=true"])
    with pytest.raises(SystemExit):
        server_module.parse_arguments(["--no_such_flag=1"])
    assert parse_channel_arguments("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb") == [
        ("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb")
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not key=value"):
        parse_channel_arguments("novalue")


def test_server_refuses_to_start_without_models(tmp_path: Path) -> None:
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert server_module.main([f"--model_config_file={tmp_path / 'missing.config'}", "--port=0"]) == 1
        assert server_module.main(["--port=0"]) == 1
    finally:  # main() installs its own handlers; give pytest back its own
        for number, handler in handlers.items():
            signal.signal(number, handler)


def test_tensorflow_session_config_file_reaches_every_session(tmp_path: Path) -> None:
    """--tensorflow_session_config_file (TF Serving's): a text ConfigProto given to each model's
    session, its unset thread counts filled from the process's; a file that does not parse is
    refused with its reason."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    from common.repository import SHARED_ROOT
    from serving.runtime import load_runtime, read_session_config

    config_file = tmp_path / "session.config"
    config_file.write_text(
        "inter_op_parallelism_threads: 1\ngraph_options { rewrite_options { constant_folding: OFF } }\n"
    )
    runtime = load_runtime(
        SHARED_ROOT / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123",
        session_config=read_session_config(config_file),
    )
    try:
        used = runtime._session._config  # type: ignore[attr-defined]
        assert used.graph_options.rewrite_options.constant_folding == rewriter_config_pb2.RewriterConfig.OFF
        assert used.inter_op_parallelism_threads == 1
        assert runtime.run("serving_default", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]
    finally:
        runtime.close()
    config_file.write_text("no_such_field: 1\n")
    with pytest.raises(InvalidArgumentError, match="Error parsing TensorFlow session config file"):
        read_session_config(config_file)
