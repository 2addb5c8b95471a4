"""Locust users for the aidetect stack.

- `GatewayUser` posts the real uploads of ../shared/data/uploads (JPEG, PNG, WebP, 20 KB to
  2.5 MB, picked at random) to the gateway's `POST /predict`, as the web page does.
- `GrpcPredictUser` calls the model server's `PredictionService.Predict` directly, as a gRPC
  client that skips the gateway would (ARCHITECTURE.md): the uint8 256x256 canonical tensor that the shared
  preprocessing makes of an upload to `serving_default`, or the encoded file to
  `predict_image_bytes`. Each call is reported to Locust as a request event (type `grpc`).

`python -m loadtest.run` runs this headless and judges the result; by hand:

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --model-server 127.0.0.1:8500
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# Locust patches the standard library for gevent when imported; gRPC must then be told to
# cooperate with gevent before any channel exists, or every call would block all users.
from locust import FastHttpUser, User, events, task  # isort: skip
import gevent  # isort: skip
import grpc  # isort: skip
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

from gateway.__main__ import use_tensorflow_protos_only  # noqa: E402

# TF Serving's protos without importing all of TensorFlow (seconds and ~600 MB per Locust process).
use_tensorflow_protos_only()

import numpy as np  # noqa: E402
from locust.argument_parser import LocustArgumentParser  # noqa: E402
from locust.env import Environment  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from common import signatures  # noqa: E402
from common.model_config import DEFAULT_MODEL_NAME  # noqa: E402
from common.tensors import predict_request  # noqa: E402
from loadtest.samples import (  # noqa: E402
    MultipartUpload,
    load_uploads,
    model_inputs,
    multipart_upload,
)
from loadtest.settings import UPLOADS_DIRECTORY  # noqa: E402

GRPC_REQUEST_TYPE = "grpc"
PREDICT_ROUTE = "/predict"
# Deadline of each call: far above the latency target, so a slow answer is measured, not cut off.
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Formats the bytes signature promises to decode (the contract: JPEG/PNG/GIF/BMP).
BYTES_SIGNATURE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
REQUEST_LOG_COLUMNS = ("start_time", "request_type", "name", "response_time_ms", "response_length", "error")


@events.init_command_line_parser.add_listener
def add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("aidetect")
    group.add_argument(
        "--uploads", default=str(UPLOADS_DIRECTORY), env_var="LOCUST_UPLOADS", help="folder of upload samples"
    )
    group.add_argument(
        "--model-server",
        default="",
        env_var="LOCUST_MODEL_SERVER",
        help="model server gRPC host:port for GrpcPredictUser",
    )
    group.add_argument("--model-name", default=DEFAULT_MODEL_NAME, env_var="LOCUST_MODEL_NAME")
    group.add_argument(
        "--version-label", default="stable", env_var="LOCUST_VERSION_LABEL", help='"" = latest version'
    )
    group.add_argument("--wait-min", type=float, default=0.5, env_var="LOCUST_WAIT_MIN", help="think time, s")
    group.add_argument("--wait-max", type=float, default=1.5, env_var="LOCUST_WAIT_MAX", help="think time, s")
    group.add_argument(
        "--request-log", default="", env_var="LOCUST_REQUEST_LOG", help="CSV of every request (for plots)"
    )


@dataclass(frozen=True)
class Workload:
    """Everything the users send, prepared once before the load starts."""

    uploads: list[MultipartUpload]
    tensor_requests: list[predict_pb2.PredictRequest]
    bytes_requests: list[predict_pb2.PredictRequest]


def build_workload(options: Any, with_grpc: bool) -> Workload:
    samples = load_uploads(Path(options.uploads))
    uploads = [multipart_upload(sample) for sample in samples]
    if not with_grpc:
        return Workload(uploads, [], [])
    name, label = options.model_name, options.version_label
    tensor_requests = [
        predict_request(name, {signatures.IMAGE_INPUT: image[None]}, version_label=label)
        for image in model_inputs(samples)
    ]
    bytes_requests = [
        predict_request(
            name,
            {signatures.BYTES_INPUT: np.array([sample.data], dtype=object)},
            signatures.BYTES_SIGNATURE,
            version_label=label,
        )
        for sample in samples
        if sample.format in BYTES_SIGNATURE_FORMATS
    ]
    return Workload(uploads, tensor_requests, bytes_requests)


_workload: Workload | None = None
_request_log: tuple[TextIO, Any] | None = None


def workload() -> Workload:
    if _workload is None:
        raise RuntimeError("the workload is prepared by Locust's init event; run this file with locust")
    return _workload


def log_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    if _request_log is None:
        return
    started = start_time if start_time is not None else time.time() - response_time / 1000
    error = "" if exception is None else (str(exception) or type(exception).__name__).splitlines()[0][:200]
    _request_log[1].writerow(
        (f"{started:.3f}", request_type, name, f"{response_time:.2f}", response_length, error)
    )


@events.init.add_listener
def prepare(environment: Environment, **_: Any) -> None:
    global _workload, _request_log
    options = environment.parsed_options
    if options is None:
        return
    with_grpc = GrpcPredictUser in environment.user_classes
    _workload = build_workload(options, with_grpc)
    if options.request_log:
        handle = Path(options.request_log).open("w", newline="")  # noqa: SIM115 - closed on quit
        writer = csv.writer(handle)
        writer.writerow(REQUEST_LOG_COLUMNS)
        _request_log = (handle, writer)
        environment.events.request.add_listener(log_request)
    # Preparing took seconds without yielding to gevent, whose loop caches the time: refresh it, or
    # Locust's --run-time timer (armed next) would start from the stale time and end the test early.
    gevent.get_hub().loop.update_now()


@events.quit.add_listener
def close_request_log(**_: Any) -> None:
    global _request_log
    if _request_log is not None:
        _request_log[0].close()
        _request_log = None


def think_time(user: User) -> float:
    options = user.environment.parsed_options
    low, high = (options.wait_min, options.wait_max) if options is not None else (0.5, 1.5)
    return random.uniform(low, high)


class GatewayUser(FastHttpUser):
    """Uploads one real image per request to the gateway's /predict."""

    weight = 3
    wait_time = think_time
    connection_timeout = REQUEST_TIMEOUT_SECONDS
    network_timeout = REQUEST_TIMEOUT_SECONDS

    @task
    def predict(self) -> None:
        upload = random.choice(workload().uploads)
        with self.client.post(
            PREDICT_ROUTE,
            data=upload.body,  # type: ignore[arg-type]  # bytes go through as they are (geventhttpclient)
            headers={"Content-Type": upload.content_type},
            name=f"POST {PREDICT_ROUTE}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif response.json().get("success") is not True:
                response.failure(f"no success in the answer: {(response.text or '')[:200]}")


class GrpcCallError(Exception):
    """A failed gRPC call, named by its status code so Locust groups failures by cause."""

    def __init__(self, error: grpc.RpcError) -> None:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        super().__init__(f"{code.name if code else 'UNKNOWN'}: {details}")


class GrpcPredictUser(User):
    """Calls Predict on the model server directly, one image per call, over one channel per user."""

    weight = 1
    wait_time = think_time

    def on_start(self) -> None:
        options = self.environment.parsed_options
        address = options.model_server if options is not None else ""
        if not address:
            raise RuntimeError("GrpcPredictUser needs --model-server host:port")
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task(3)
    def predict_tensor(self) -> None:
        self.predict(random.choice(workload().tensor_requests))

    @task(1)
    def predict_bytes(self) -> None:
        requests = workload().bytes_requests
        self.predict(random.choice(requests) if requests else random.choice(workload().tensor_requests))

    def predict(self, request: predict_pb2.PredictRequest) -> None:
        start_time = time.time()
        started = time.perf_counter()
        exception: BaseException | None = None
        response_length = 0
        try:
            response = self.stub.Predict(request, timeout=REQUEST_TIMEOUT_SECONDS)
            response_length = response.ByteSize()
        except grpc.RpcError as error:
            exception = GrpcCallError(error)
        self.environment.events.request.fire(
            request_type=GRPC_REQUEST_TYPE,
            name=f"Predict {request.model_spec.signature_name}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response_length,
            response=None,
            context={},
            exception=exception,
            start_time=start_time,
        )
