"""What the rollout asks the model servers, over TF Serving's own gRPC API.

The same calls work against the real TF Serving and the local server (ARCHITECTURE.md contract 4):
GetModelStatus (state of each version), GetModelMetadata with a version label (which version a
label resolves to right now) and HandleReloadConfigRequest (push a new models.config).

A label is checked through GetModelMetadata because GetModelStatus takes version numbers only;
the metadata answer carries the version the server resolved the label to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from k8s.errors import ModelServerError, WaitTimeoutError

AVAILABLE = "AVAILABLE"
END = "END"  # TF Serving keeps unloaded versions in GetModelStatus with this state
SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving serves
# Codes that mean "this label resolves to nothing served", not "the server cannot be asked".
# UNAVAILABLE is not one of them: it is what a dead connection says too, so waits retry it.
NOT_SERVED_CODES = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,  # TF Serving: unknown version label
    grpc.StatusCode.FAILED_PRECONDITION,
)

Result = TypeVar("Result")


class ModelServer:
    """One model server (one TF Serving pod) seen through a long-lived gRPC channel."""

    def __init__(self, address: str, model_name: str, timeout_seconds: float = 5.0) -> None:
        self.address = address
        self.model_name = model_name
        self.timeout_seconds = timeout_seconds
        self._channel = grpc.insecure_channel(address)
        self._model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._prediction_service = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _statuses(self) -> dict[int, tuple[str, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            response = self._model_service.GetModelStatus(request, timeout=self.timeout_seconds)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {
            int(status.version): (
                get_model_status_pb2.ModelVersionStatus.State.Name(status.state),
                status.status.error_message if status.status.error_code else "",
            )
            for status in response.model_version_status
        }

    def version_states(self) -> dict[int, str]:
        """Version -> state name (START, LOADING, AVAILABLE, UNLOADING, END) for every version it knows."""
        return {version: state for version, (state, _) in self._statuses().items()}

    def version_status(self, version: int) -> tuple[str | None, str]:
        """(state or None when unknown, the load error if the version ended with one)."""
        state, error = self._statuses().get(version, (None, ""))
        return state, error if state == END else ""

    def label_version(self, label: str) -> int | None:
        """The version `label` resolves to on this server now, or None when it resolves to nothing served."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        request.model_spec.name = self.model_name
        request.model_spec.version_label = label
        try:
            response = self._prediction_service.GetModelMetadata(request, timeout=self.timeout_seconds)
        except grpc.RpcError as error:
            if error.code() in NOT_SERVED_CODES:
                return None
            raise
        return int(response.model_spec.version.value)

    def reload_config(self, config: ModelServerConfig) -> None:
        """HandleReloadConfigRequest: the server switches to `config` now instead of at its next poll."""
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(config)
        try:
            response = self._model_service.HandleReloadConfigRequest(request, timeout=self.timeout_seconds)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise ModelServerError(
                    f"{self.address} does not take configs over gRPC ({error.details()}): "
                    "use --reload poll, or start the model server with --enable_reload_config_rpc"
                ) from error
            raise
        if response.status.error_code != 0:
            raise ModelServerError(
                f"{self.address} refused the new models.config: {response.status.error_message}"
            )


def wait_for(
    servers: Sequence[ModelServer],
    check: Callable[[ModelServer], bool],
    what: str,
    timeout_seconds: float,
    poll_seconds: float = 0.5,
) -> None:
    """Poll until `check` holds on every server; connection errors are retried until the deadline."""
    deadline = time.monotonic() + timeout_seconds
    pending = list(servers)
    last_problem = ""
    while True:
        still_pending = []
        for server in pending:
            try:
                done = check(server)
            except grpc.RpcError as error:
                done = False
                last_problem = f"{server.address}: {error.code().name} {error.details()}"
            if not done:
                still_pending.append(server)
        pending = still_pending
        if not pending:
            return
        if time.monotonic() >= deadline:
            addresses = ", ".join(server.address for server in pending)
            detail = f" (last error: {last_problem})" if last_problem else ""
            raise WaitTimeoutError(f"{what}: not on {addresses} after {timeout_seconds:g} s{detail}")
        time.sleep(poll_seconds)


def version_unloaded(version: int) -> Callable[[ModelServer], bool]:
    return lambda server: server.version_states().get(version, END) == END


def label_points_at(label: str, version: int | None) -> Callable[[ModelServer], bool]:
    """`version=None`: the label is gone (resolves to nothing)."""
    return lambda server: server.label_version(label) == version
