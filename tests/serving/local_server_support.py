"""Shared pieces of the local model server tests: a tiny SavedModel that follows the contract,
free loopback ports, a server subprocess, and gRPC helpers.

The tiny model has both signatures of the contract (names from common/signatures.py): its
logit is a linear function of the mean pixel value, so every version gives a different,
exactly predictable answer, and it loads in about a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from common import model_config, signatures, tensors
from common.preprocessing import IMAGE_SIZE
from common.processes import free_port, stop_process
from common.repository import REPO_ROOT
from common.tensors import to_numpy, to_tensor_proto

MODEL_NAME = "ai_detector"
WAIT_SECONDS = 60.0  # upper bound for "eventually" loops; a passing run takes far less


def tiny_logit(images: np.ndarray, bias: float) -> np.ndarray:
    """What the tiny model computes: a logit from the mean pixel value."""
    mean = images.reshape(images.shape[0], -1).astype(np.float64).mean(axis=1) / 255.0
    return (4.0 * (mean - 0.5) + bias).astype(np.float32)


def build_tiny_saved_model(
    directory: Path, *, bias: float, threshold: float = 0.5, temperature: float = 1.5
) -> None:
    """Write a SavedModel following the model-directory contract (signatures, warmup, model card)."""
    import tensorflow as tf

    from tests.gateway.tiny_model import write_contract_model

    write_contract_model(
        directory, model_name=MODEL_NAME, slope=4.0, bias=bias, temperature=temperature, threshold=threshold,
        warmup=False,
    )  # fmt: skip
    warmup = directory / signatures.WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        for signature_name, alias, value in (
            (signatures.SERVING_SIGNATURE, signatures.IMAGE_INPUT, random_images(1)),
            (signatures.BYTES_SIGNATURE, signatures.BYTES_INPUT, np.array([png_bytes(seed=1)], dtype=object)),
        ):
            request = predict_request({alias: to_tensor_proto(value, as_tensor_content=True)}, signature_name)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
    )


def png_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def copy_version(source: Path, model_root: Path, version: int | str) -> Path:
    """Install a version the way exporters do: write beside, then rename into place."""
    model_root.mkdir(parents=True, exist_ok=True)
    staging = model_root / f".tmp-{version}"
    shutil.copytree(source, staging)
    target = model_root / str(version)
    staging.rename(target)
    return target


def config_text(models: list[dict[str, Any]]) -> str:
    """A models.config; each model: name, base_path, policy (text inside model_version_policy), labels.

    Built as TF Serving's ModelServerConfig proto and written by common.model_config, the one
    writer of that file (labels are set as given: tests also write configs TF Serving refuses)."""
    config = model_config.ModelServerConfig()
    config.model_config_list.SetInParent()
    for model in models:
        entry = config.model_config_list.config.add(
            name=model["name"], base_path=model["base_path"], model_platform="tensorflow"
        )
        if model.get("policy"):
            text_format.Parse(model["policy"], entry.model_version_policy)
        for label, version in model.get("labels", {}).items():
            entry.version_labels[label] = version
    return model_config.dumps(config)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log_path: Path

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code, _ = stop_process(self.process)
        return code


def start_server(extra_flags: list[str], log_path: Path) -> ServerProcess:
    """Start `python -m serving.server` on free loopback ports; see wait_until_serving for readiness."""
    grpc_port, rest_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "serving.server",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--host=127.0.0.1",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
        *extra_flags,
    ]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=environment
    )
    return ServerProcess(process, grpc_port, rest_port, log_path)


def eventually(condition: Callable[[], Any], what: str, server: ServerProcess | None = None) -> Any:
    """Poll `condition` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + WAIT_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server is not None and server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode} while waiting for {what}:\n{server.log()}"
            )
        try:
            result = condition()
        except (grpc.RpcError, OSError, ValueError, KeyError) as error:
            last_error = error
        else:
            if result:
                return result
        time.sleep(0.1)
    log = server.log() if server else ""
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{log}")


# ---------------------------------------------------------------- gRPC helpers


def predict_request(
    inputs: dict[str, tensor_pb2.TensorProto],
    signature_name: str = signatures.SERVING_SIGNATURE,
    model_name: str = MODEL_NAME,
    version: int | None = None,
    label: str | None = None,
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    """A Predict request for `inputs` (TensorProtos, sent as they are: also malformed ones)."""
    return tensors.predict_request(
        model_name, inputs, signature_name, version=version, version_label=label, output_filter=output_filter
    )


class Client:
    """Stubs on one channel to the server under test, with a deadline on every call."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def predict(
        self,
        inputs: dict[str, np.ndarray],
        *,
        model_name: str = MODEL_NAME,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = signatures.SERVING_SIGNATURE,
        output_filter: tuple[str, ...] = (),
        as_tensor_content: bool = True,
        timeout: float = 30.0,
    ) -> tuple[predict_pb2.PredictResponse, dict[str, np.ndarray]]:
        request = predict_request(
            {
                alias: to_tensor_proto(value, as_tensor_content=as_tensor_content)
                for alias, value in inputs.items()
            },
            signature_name,
            model_name,
            version,
            label,
            output_filter,
        )
        response = self.predictions.Predict(request, timeout=timeout)
        return response, {alias: to_numpy(proto) for alias, proto in response.outputs.items()}

    def status(
        self, model_name: str = MODEL_NAME, version: int | None = None
    ) -> dict[int, tuple[str, int, str]]:
        """version -> (state name, error code, error message)."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model_name))
        if version is not None:
            request.model_spec.version.value = version
        response = self.models.GetModelStatus(request, timeout=10)
        return {
            status.version: (
                get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
                status.status.error_code,
                status.status.error_message,
            )
            for status in response.model_version_status
        }


@contextlib.contextmanager
def client_for(server: ServerProcess) -> Iterator[Client]:
    client = Client(server.grpc_address)
    try:
        yield client
    finally:
        client.close()


def metric_value(metrics_text: str, name: str, labels: str = "") -> float:
    """The value of one sample line (`name{labels} value`) in Prometheus text."""
    wanted = f"{name}{{{labels}}} "
    for line in metrics_text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    raise KeyError(f"{wanted!r} not in metrics")
