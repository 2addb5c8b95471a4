"""Conformance of the local model server with TF Serving's documented API, on loopback.

Three real server processes serve real tiny SavedModels (tests/serving/local_server_support.py):
`server` (no batching; models `ai_detector` with labels and `hot_model` for hot loading; its
config file polled every second), `reload_server` (the same config, not polled, configs pushed
over HandleReloadConfigRequest) and `batching_server` (batching on, HandleReloadConfigRequest off
as by default, stopped with SIGTERM by the last test). Tests run in file
order and some change what the servers serve; each says what state it leaves.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_metadata_pb2, model_management_pb2

from common import model_config, signatures
from common.preprocessing import IMAGE_SIZE, decode_and_resize
from common.repository import SHARED_UPLOADS
from common.tensors import to_tensor_proto
from tests.serving.local_server_support import (
    MODEL_NAME,
    Client,
    ServerProcess,
    build_tiny_saved_model,
    client_for,
    config_text,
    copy_version,
    eventually,
    metric_value,
    png_bytes,
    predict_request,
    random_images,
    start_server,
    tiny_logit,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]

BIAS = {1: -1.0, 2: 1.0}  # ai_detector's versions answer differently, so routing is visible
TEMPERATURE = 1.5
HOT_MODEL = "hot_model"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    built = {}
    for version, bias in BIAS.items():
        built[version] = root / f"bias_{version}"
        build_tiny_saved_model(built[version], bias=bias, temperature=TEMPERATURE)
    return built


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local_server")


def _main_config(labels: dict[str, int] | None = None) -> str:
    return config_text(
        [
            {
                "name": MODEL_NAME,
                "base_path": f"/models/{MODEL_NAME}",
                "policy": "all {}",
                "labels": labels if labels is not None else {"stable": 1, "canary": 2},
            },
            {"name": HOT_MODEL, "base_path": f"/models/{HOT_MODEL}", "policy": "latest { num_versions: 1 }"},
        ]
    )


@pytest.fixture(scope="module")
def servers(tiny_models: dict[int, Path], workspace: Path) -> Iterator[dict[str, ServerProcess]]:
    """All servers, started together so their start-ups overlap."""
    models = workspace / "models"
    for version in BIAS:
        copy_version(tiny_models[version], models / MODEL_NAME, version)
    copy_version(tiny_models[1], models / HOT_MODEL, 1)
    (workspace / "models.config").write_text(_main_config())
    (workspace / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics/prom" }\n')
    batching_models = workspace / "batching_models"
    copy_version(tiny_models[1], batching_models / MODEL_NAME, 1)
    (workspace / "batching.config").write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 2000000 }\n"  # 2 s: concurrent test requests always meet
        "max_enqueued_batches { value: 4 }\n"
        "num_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    main = start_server(
        [
            f"--model_config_file={workspace / 'models.config'}",
            "--model_config_file_poll_wait_seconds=1",
            "--enable_reload_config_rpc",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            f"--model_base_path_prefix_map=/models={models}",
            f"--monitoring_config_file={workspace / 'monitoring.config'}",
        ],
        workspace / "server.log",
    )
    batching = start_server(
        [
            f"--model_base_path=/models/{MODEL_NAME}",
            f"--model_name={MODEL_NAME}",
            f"--model_base_path_prefix_map=/models={batching_models}",
            "--enable_batching",
            f"--batching_parameters_file={workspace / 'batching.config'}",
            f"--monitoring_config_file={workspace / 'monitoring.config'}",
        ],
        workspace / "batching_server.log",
    )
    # The control plane over RPC: on, and no config-file poll to take the pushed configs back.
    reload = start_server(
        [
            f"--model_config_file={workspace / 'models.config'}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            f"--model_base_path_prefix_map=/models={models}",
            "--enable_reload_config_rpc",
        ],
        workspace / "reload_server.log",
    )
    running = {"main": main, "batching": batching, "reload": reload}
    try:
        for process in running.values():
            wait_until_serving(process)
        yield running
    finally:
        for process in running.values():
            process.stop()


def wait_until_serving(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.grpc_address)
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    try:
        eventually(serving, "health SERVING", server)
    finally:
        channel.close()


@pytest.fixture(scope="module")
def server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["main"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with client_for(server) as opened:
        yield opened


@pytest.fixture(scope="module")
def rest(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as opened:
        yield opened


def expected_probability(images: np.ndarray, version: int) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-tiny_logit(images, BIAS[version]).astype(np.float64) / TEMPERATURE))


def error_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


# ---------------------------------------------------------------- status, health, metadata


def test_status_lists_every_loaded_version(client: Client) -> None:
    assert client.status() == {2: ("AVAILABLE", 0, ""), 1: ("AVAILABLE", 0, "")}
    assert client.status(version=1) == {1: ("AVAILABLE", 0, "")}
    missing = error_of(lambda: client.status("nope"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == "Could not find any versions of model nope"
    missing_version = error_of(lambda: client.status(version=7))
    assert missing_version.code() == grpc.StatusCode.NOT_FOUND
    assert missing_version.details() == f"Could not find version 7 of model {MODEL_NAME}"


def test_health_service_names(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_metadata_returns_the_signature_defs(client: Client) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = client.predictions.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 2  # latest
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    serving = signature_map.signature_def[signatures.SERVING_SIGNATURE]
    assert serving.method_name == "tensorflow/serving/predict"
    image = serving.inputs[signatures.IMAGE_INPUT]
    assert image.dtype == 4  # DT_UINT8
    assert [dim.size for dim in image.tensor_shape.dim] == [-1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert set(serving.outputs) == {
        signatures.OUTPUT_PROBABILITY,
        signatures.OUTPUT_LOGIT,
        signatures.OUTPUT_THRESHOLD,
        signatures.OUTPUT_LABEL,
    }
    assert signature_map.signature_def[signatures.BYTES_SIGNATURE].inputs[signatures.BYTES_INPUT].dtype == 7

    request.model_spec.version_label = "stable"
    assert client.predictions.GetModelMetadata(request, timeout=10).model_spec.version.value == 1
    unsupported = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["model_card"])
    unsupported.model_spec.name = MODEL_NAME
    error = error_of(lambda: client.predictions.GetModelMetadata(unsupported, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Metadata field model_card is not supported"


# ---------------------------------------------------------------- Predict


@pytest.mark.parametrize(
    ("version", "label", "served"),
    [(1, None, 1), (2, None, 2), (None, "stable", 1), (None, "canary", 2), (None, None, 2)],
)
def test_predict_routes_by_version_label_and_latest(
    client: Client, version: int | None, label: str | None, served: int
) -> None:
    images = random_images(3, seed=served)
    response, outputs = client.predict({signatures.IMAGE_INPUT: images}, version=version, label=label)
    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == served
    assert response.model_spec.signature_name == signatures.SERVING_SIGNATURE
    np.testing.assert_allclose(
        outputs[signatures.OUTPUT_PROBABILITY], expected_probability(images, served), atol=1e-5
    )
    np.testing.assert_allclose(outputs[signatures.OUTPUT_LOGIT], tiny_logit(images, BIAS[served]), atol=1e-5)
    assert outputs[signatures.OUTPUT_THRESHOLD].tolist() == [0.5] * 3
    assert outputs[signatures.OUTPUT_LABEL].dtype == np.int32
    assert (
        outputs[signatures.OUTPUT_LABEL].tolist() == (outputs[signatures.OUTPUT_PROBABILITY] >= 0.5).tolist()
    )


def test_predict_accepts_typed_fields_and_answers_with_them(client: Client) -> None:
    """uint8 in int_val (what tf.make_tensor_proto does not do, but clients may); outputs in float_val."""
    images = random_images(1, seed=5)
    response, outputs = client.predict({signatures.IMAGE_INPUT: images}, version=1, as_tensor_content=False)
    probability = response.outputs[signatures.OUTPUT_PROBABILITY]
    assert len(probability.float_val) == 1 and not probability.tensor_content  # TF Serving's AsProtoField
    np.testing.assert_allclose(
        outputs[signatures.OUTPUT_PROBABILITY], expected_probability(images, 1), atol=1e-5
    )


def test_predict_with_output_filter(client: Client) -> None:
    _, outputs = client.predict(
        {signatures.IMAGE_INPUT: random_images(2)}, output_filter=(signatures.OUTPUT_PROBABILITY,)
    )
    assert set(outputs) == {signatures.OUTPUT_PROBABILITY}


def test_bytes_signature_matches_shared_preprocessing(client: Client) -> None:
    """Real uploads through the in-graph decoder agree with common.preprocessing (stated tolerance)."""
    from PIL import Image

    folder = SHARED_UPLOADS
    # RGB files only: the tiny model's decoder drops alpha, where the shared function composites it on white.
    candidates = [path for pattern in ("*.jp*g", "*.png") for path in sorted(folder.glob(pattern))]
    uploads = [path for path in candidates if Image.open(path).mode == "RGB"][:3]
    if not uploads:
        pytest.skip("no real uploads in ../shared/data/uploads")
    files = [path.read_bytes() for path in uploads]
    response, outputs = client.predict(
        {signatures.BYTES_INPUT: np.array(files, dtype=object)},
        version=2,
        signature_name=signatures.BYTES_SIGNATURE,
    )
    assert response.model_spec.signature_name == signatures.BYTES_SIGNATURE
    reference = np.stack([decode_and_resize(data) for data in files])
    # The tiny model's logit moves 4/255 per grey level of mean brightness: 0.05 allows ~3 levels.
    np.testing.assert_allclose(outputs[signatures.OUTPUT_LOGIT], tiny_logit(reference, BIAS[2]), atol=0.05)


@pytest.mark.parametrize(
    ("request_kwargs", "code", "message"),
    [
        ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (
            {"version": 99},
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: Specific({MODEL_NAME}, 99)",
        ),
        ({"label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
        (
            {"signature_name": "nope"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_predict_errors_for_what_does_not_exist(
    client: Client, request_kwargs: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    error = error_of(lambda: client.predict({signatures.IMAGE_INPUT: random_images(1)}, **request_kwargs))
    assert (error.code(), error.details()) == (code, message)


def test_a_failed_predict_is_logged_with_the_callers_request_id(
    client: Client, server: ServerProcess
) -> None:
    """Issue 14: one request id end to end: the gateway sends it as metadata `x-request-id`."""
    request = predict_request(
        {signatures.IMAGE_INPUT: to_tensor_proto(random_images(1))},
        signatures.SERVING_SIGNATURE,
        "no_such_model",
    )
    with pytest.raises(grpc.RpcError):
        client.predictions.Predict(request, timeout=10, metadata=(("x-request-id", "gw-7f3a9c"),))
    eventually(lambda: "request_id=gw-7f3a9c" in server.log(), "the request id in the log", server)


@pytest.mark.parametrize(
    ("inputs", "message_start"),
    [
        (
            {signatures.IMAGE_INPUT: np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)},
            "input image must be DT_UINT8",
        ),
        # No shape check before the graph, as in TF Serving: a rank the graph cannot run fails in it.
        ({signatures.IMAGE_INPUT: np.zeros((1, 2), np.uint8)}, ""),
        (
            {"picture": np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)},
            "input tensor alias not found in signature: picture",
        ),
        ({}, "input size does not match signature: 0!=1"),
    ],
)
def test_predict_refuses_bad_tensors(
    client: Client, inputs: dict[str, np.ndarray], message_start: str
) -> None:
    error = error_of(lambda: client.predict(inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(message_start), error.details()


def test_predict_feeds_any_shape_the_graph_can_run(client: Client) -> None:
    """TF Serving does not check request shapes against the signature (its own tests send `x`
    shaped [1] to a [-1,1] input): a 10x10 image runs through the convolutions and gets a score."""
    _, outputs = client.predict({signatures.IMAGE_INPUT: np.zeros((1, 10, 10, 3), np.uint8)})
    assert outputs[signatures.OUTPUT_PROBABILITY].shape[0] == 1


def test_bytes_signature_refuses_a_file_that_is_not_an_image(client: Client) -> None:
    error = error_of(
        lambda: client.predict(
            {signatures.BYTES_INPUT: np.array([b"not an image"], dtype=object)},
            signature_name=signatures.BYTES_SIGNATURE,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- REST


def test_rest_status_and_metadata(rest: httpx.Client) -> None:
    response = rest.get(f"/v1/models/{MODEL_NAME}")
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    assert [
        entry["version"]
        for entry in rest.get(f"/v1/models/{MODEL_NAME}/versions/1").json()["model_version_status"]
    ] == ["1"]
    assert (
        rest.get(f"/v1/models/{MODEL_NAME}/labels/canary").json()["model_version_status"][0]["version"] == "2"
    )
    metadata = rest.get(f"/v1/models/{MODEL_NAME}/labels/stable/metadata").json()
    assert metadata["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
    serving = metadata["metadata"]["signature_def"]["signature_def"][signatures.SERVING_SIGNATURE]
    assert serving["inputs"][signatures.IMAGE_INPUT]["dtype"] == "DT_UINT8"
    assert serving["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar_forms(rest: httpx.Client) -> None:
    images = random_images(2, seed=9)
    row = rest.post(f"/v1/models/{MODEL_NAME}/versions/1:predict", json={"instances": images.tolist()})
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == {
        signatures.OUTPUT_PROBABILITY,
        signatures.OUTPUT_LOGIT,
        signatures.OUTPUT_THRESHOLD,
        signatures.OUTPUT_LABEL,
    }
    probabilities = [prediction[signatures.OUTPUT_PROBABILITY] for prediction in predictions]
    np.testing.assert_allclose(probabilities, expected_probability(images, 1), atol=1e-5)
    assert predictions[0][signatures.OUTPUT_THRESHOLD] == 0.5  # float32 printed shortest, as TF Serving does

    columnar = rest.post(
        f"/v1/models/{MODEL_NAME}/labels/canary:predict",
        json={
            "signature_name": signatures.SERVING_SIGNATURE,
            "inputs": {signatures.IMAGE_INPUT: images.tolist()},
        },
    )
    assert columnar.status_code == 200, columnar.text
    outputs = columnar.json()["outputs"]
    np.testing.assert_allclose(
        outputs[signatures.OUTPUT_PROBABILITY], expected_probability(images, 2), atol=1e-5
    )
    assert outputs[signatures.OUTPUT_LABEL] == [
        int(value >= 0.5) for value in expected_probability(images, 2)
    ]


def test_rest_predict_b64_bytes(rest: httpx.Client) -> None:
    encoded = base64.b64encode(png_bytes(seed=3)).decode()
    response = rest.post(
        f"/v1/models/{MODEL_NAME}:predict",
        json={
            "signature_name": signatures.BYTES_SIGNATURE,
            "instances": [{"b64": encoded}, {"b64": encoded}],
        },
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first == second
    columnar = rest.post(
        f"/v1/models/{MODEL_NAME}:predict",
        json={
            "signature_name": signatures.BYTES_SIGNATURE,
            "inputs": {signatures.BYTES_INPUT: [{"b64": encoded}]},
        },
    )
    assert columnar.json()["outputs"][signatures.OUTPUT_LOGIT] == [first[signatures.OUTPUT_LOGIT]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "POST",
            "/v1/models/nope:predict",
            {"instances": [1]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}/versions/9:predict",
            {"instances": [1]},
            404,
            "Servable not found",
        ),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}/labels/nope:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable",
        ),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", "{not json", 400, "JSON Parse error"),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            {"instances": [[1, 2]]},
            400,
            "",  # the graph refuses the rank (no shape check before it, as in TF Serving)
        ),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", {"inputs": [[0.5]]}, 400, "input image: floating point"),
        (
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            {"signature_name": "x", "inputs": 1},
            400,
            "Serving signature",
        ),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", {"nothing": 1}, 400, "'instances' or 'inputs'"),
        ("POST", f"/v1/models/{MODEL_NAME}:classify", {"examples": []}, 501, "classify is not supported"),
        ("GET", "/v1/things", None, 400, "Malformed request: GET /v1/things"),
    ],
)
def test_rest_errors_have_tf_serving_codes_and_bodies(
    rest: httpx.Client, method: str, path: str, body: object, status: int, message: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
    response = rest.request(method, path, content=content)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_prometheus_metrics_use_tf_serving_names(rest: httpx.Client) -> None:
    text = rest.get("/metrics/prom").text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert (
        metric_value(text, ":tensorflow:serving:request_count", f'model_name="{MODEL_NAME}",status="OK"') > 0
    )
    assert (
        metric_value(text, ":tensorflow:serving:request_count", 'model_name="__unknown__",status="NOT_FOUND"')
        > 0
    )
    # TF Serving's labels: API="Predict" over gRPC, "predict" over REST (http_rest_api_handler).
    for api, entrypoint in (("Predict", "GRPC"), ("predict", "REST")):
        labels = f'model_name="{MODEL_NAME}",API="{api}",entrypoint="{entrypoint}"'
        assert metric_value(text, ":tensorflow:serving:request_latency_count", labels) > 0
        assert f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}}' in text
    assert (
        ':tensorflow:serving:runtime_latency_bucket{model_name="ai_detector",API="Predict",runtime="TF1"'
        in text
    )
    assert ":tensorflow:cc:saved_model:load_attempt_count{model_path=" in text
    assert "# TYPE :tensorflow:cc:saved_model:load_latency counter" in text


# ---------------------------------------------------------------- the control plane


def _reload(client: Client, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest(config=model_config.parse(text))
    response = client.models.HandleReloadConfigRequest(request, timeout=60)
    assert response.HasField("status") and response.status.error_code == 0


@pytest.fixture(scope="module")
def reload_client(servers: dict[str, ServerProcess]) -> Iterator[Client]:
    with client_for(servers["reload"]) as opened:
        yield opened


def test_reload_config_request_is_refused_unless_enabled(
    servers: dict[str, ServerProcess], workspace: Path
) -> None:
    """By default the control plane is closed: the config file is the only way to change models."""
    with client_for(servers["batching"]) as batching_client:
        error = error_of(lambda: _reload(batching_client, config_text([])))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--enable_reload_config_rpc" in (error.details() or "")
        response, _ = batching_client.predict({signatures.IMAGE_INPUT: random_images(1)})
        assert response.model_spec.version.value == 1


@pytest.mark.parametrize(
    "base_path",
    ["/etc", "/tmp/elsewhere", f"/models/../../{MODEL_NAME}", "/models/../etc", "models/ai_detector"],
)
def test_reload_refuses_base_paths_outside_the_mapped_roots(reload_client: Client, base_path: str) -> None:
    """A SavedModel is a program: a pushed config cannot point the server at another folder."""
    config = config_text([{"name": MODEL_NAME, "base_path": base_path, "policy": "all {}", "labels": {}}])
    error = error_of(lambda: _reload(reload_client, config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert base_path in (error.details() or "")
    # Nothing changed: the model still serves from its own folder.
    response, _ = reload_client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")
    assert response.model_spec.version.value == 1


@pytest.mark.parametrize(
    "config",
    [
        {"model_config_list": {"config": [{"name": "a", "base_path": "/models/a"}] * 2}},
        {"model_config_list": {"config": [{"name": "a"}]}},
        {"custom_model_config": {}},
    ],
    ids=["duplicate-models", "without-base-path", "custom-config"],
)
def test_reload_refuses_invalid_configs(reload_client: Client, config: dict[str, object]) -> None:
    request = model_management_pb2.ReloadConfigRequest(config=config)
    error = error_of(lambda: reload_client.models.HandleReloadConfigRequest(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details()


def test_a_model_removed_and_added_back_serves_when_the_reload_returns(
    reload_client: Client, servers: dict[str, ServerProcess]
) -> None:
    """The reload that re-adds a model returns once it is AVAILABLE again, as TF Serving's does."""
    only_hot = config_text(
        [{"name": HOT_MODEL, "base_path": f"/models/{HOT_MODEL}", "policy": "latest { num_versions: 1 }"}]
    )
    _reload(reload_client, only_hot)
    eventually(
        lambda: all(state == "END" for state, _, _ in reload_client.status(MODEL_NAME).values()),
        "ai_detector unloaded",
        servers["reload"],
    )
    _reload(reload_client, _main_config())
    response, _ = reload_client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")
    assert response.model_spec.version.value == 1


def test_a_config_pushed_over_rpc_lasts_until_the_next_poll_of_the_file(
    client: Client, server: ServerProcess
) -> None:
    """TF Serving applies the polled config file each time, changed or not: a rogue reload that
    unloads everything is undone by the next poll (1 s here) and the models serve again."""
    _reload(client, config_text([]))
    eventually(
        lambda: (
            client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")[
                0
            ].model_spec.version.value
            == 1
        ),
        "the config file's models back",
        server,
    )


# ---------------------------------------------------------------- versions come and go (hot_model)


def test_new_version_is_loaded_and_replaces_the_old_one(
    client: Client, server: ServerProcess, tiny_models: dict[int, Path], workspace: Path
) -> None:
    """Leaves hot_model serving version 2 only."""
    assert client.status(HOT_MODEL) == {1: ("AVAILABLE", 0, "")}
    copy_version(tiny_models[2], workspace / "models" / HOT_MODEL, 2)
    eventually(
        lambda: client.status(HOT_MODEL) == {2: ("AVAILABLE", 0, ""), 1: ("END", 0, "")},
        "version 2 in, 1 out",
        server,
    )
    images = random_images(1)
    response, outputs = client.predict({signatures.IMAGE_INPUT: images}, model_name=HOT_MODEL)
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(outputs[signatures.OUTPUT_LOGIT], tiny_logit(images, BIAS[2]), atol=1e-5)


def test_broken_version_is_refused_and_the_working_one_keeps_serving(
    client: Client, server: ServerProcess, workspace: Path
) -> None:
    root = workspace / "models" / HOT_MODEL
    (root / ".tmp-7").mkdir()  # an export in progress: not a version
    (root / "notes").mkdir()
    broken = root / ".tmp-3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    broken.rename(root / "3")

    def refused() -> bool:
        states = client.status(HOT_MODEL)
        return states.get(3, ("",))[0] == "END"

    eventually(refused, "version 3 refused", server)
    states = client.status(HOT_MODEL)
    assert set(states) == {1, 2, 3}
    _, error_code, error_message = states[3]
    assert error_code != 0 and "saved_model.pb" in error_message
    assert states[2] == ("AVAILABLE", 0, "")
    response, _ = client.predict({signatures.IMAGE_INPUT: random_images(1)}, model_name=HOT_MODEL)
    assert response.model_spec.version.value == 2
    rest_status = httpx.get(f"{server.rest_url}/v1/models/{HOT_MODEL}/versions/3").json()
    assert rest_status["model_version_status"][0]["status"]["error_code"] != "OK"


# ---------------------------------------------------------------- labels move (ai_detector)


def test_reload_config_request_moves_labels(reload_client: Client) -> None:
    """Leaves stable -> 2, canary -> 1 on the reload server (applied over gRPC)."""
    client = reload_client
    swapped = _main_config({"stable": 2, "canary": 1})
    _reload(client, swapped)
    assert (
        client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")[0].model_spec.version.value
        == 2
    )
    assert (
        client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="canary")[0].model_spec.version.value
        == 1
    )

    dangling = _main_config({"stable": 1, "canary": 7})
    error = error_of(lambda: _reload(client, dangling))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 7 of model ai_detector, which is not currently available" in error.details()
    # The refused labels did not replace the working ones.
    assert (
        client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")[0].model_spec.version.value
        == 2
    )


def test_config_file_edit_moves_labels(client: Client, server: ServerProcess, workspace: Path) -> None:
    """Leaves the file and the server at stable -> 1, canary -> 2, and hot_model labelled current -> 2."""
    config = model_config.parse(_main_config())
    model_config.set_label(config, MODEL_NAME, "stable", 1)
    model_config.set_label(config, MODEL_NAME, "canary", 2)
    model_config.model(config, HOT_MODEL).version_labels["current"] = 2
    model_config.save(config, workspace / "models.config")

    def moved() -> bool:
        response, _ = client.predict(
            {signatures.IMAGE_INPUT: random_images(1)}, model_name=HOT_MODEL, label="current"
        )
        return response.model_spec.version.value == 2

    eventually(moved, "the new label current -> 2 of hot_model", server)
    response, _ = client.predict({signatures.IMAGE_INPUT: random_images(1)}, label="stable")
    assert response.model_spec.version.value == 1


# ---------------------------------------------------------------- batching, then SIGTERM (batching_server)


@pytest.fixture(scope="module")
def batching_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["batching"]


def _batch_counts(server: ServerProcess) -> tuple[float, float, float]:
    text = httpx.get(f"{server.rest_url}/metrics/prom", timeout=10).text
    name = ":tensorflow:serving:batching_session"
    return (
        metric_value(text, f"{name}:input_batch_size_count"),
        metric_value(text, f"{name}:input_batch_size_sum"),
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(f"{name}:padding_size_sum{{")
        ),
    )


def test_batching_merges_concurrent_requests(batching_server: ServerProcess) -> None:
    batches_before, rows_before, padding_before = _batch_counts(batching_server)
    images = random_images(6, seed=11)
    with client_for(batching_server) as batching_client, ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(
                lambda index: batching_client.predict({signatures.IMAGE_INPUT: images[index : index + 1]}),
                range(6),
            )
        )
    for index, (_, outputs) in enumerate(results):  # every caller got its own row back
        np.testing.assert_allclose(
            outputs[signatures.OUTPUT_LOGIT], tiny_logit(images[index : index + 1], BIAS[1]), atol=1e-5
        )
    batches_after, rows_after, padding_after = _batch_counts(batching_server)
    assert rows_after - rows_before == 6
    assert batches_after - batches_before < 6  # at least two requests shared a run
    assert padding_after > padding_before  # 6 rows never fill the allowed sizes 4 and 8 exactly


def test_batching_refuses_requests_larger_than_max_batch_size(batching_server: ServerProcess) -> None:
    with client_for(batching_server) as batching_client:
        error = error_of(lambda: batching_client.predict({signatures.IMAGE_INPUT: random_images(9)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Task size 9 is larger than maximum input batch size 8"


def test_sigterm_finishes_requests_in_flight_then_exits_0(batching_server: ServerProcess) -> None:
    """Stops the batching server."""
    images = random_images(4, seed=21)
    results: list[object] = [None] * 4
    with client_for(batching_server) as batching_client:

        def call(index: int) -> None:
            try:
                results[index] = batching_client.predict({signatures.IMAGE_INPUT: images[index : index + 1]})[
                    1
                ]
            except grpc.RpcError as error:
                results[index] = error

        threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()

        def all_in_flight() -> bool:
            text = httpx.get(f"{batching_server.rest_url}/metrics/prom", timeout=5).text
            return metric_value(text, "local_model_server_in_flight_requests", 'entrypoint="GRPC"') == 4

        # The batch waits up to 2 s for company, so the four requests are held inside the server.
        eventually(all_in_flight, "4 requests in flight", batching_server)
        exit_code = batching_server.stop()
        for thread in threads:
            thread.join()
    assert exit_code == 0, batching_server.log()
    for index, result in enumerate(results):
        assert isinstance(result, dict), result
        np.testing.assert_allclose(
            result[signatures.OUTPUT_LOGIT], tiny_logit(images[index : index + 1], BIAS[1]), atol=1e-5
        )
