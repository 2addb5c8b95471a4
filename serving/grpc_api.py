"""TF Serving's gRPC API over the model manager, with tensorflow-serving-api's own protos.

PredictionService: Predict and GetModelMetadata (Classify, Regress and MultiInference answer
UNIMPLEMENTED). ModelService: GetModelStatus and HandleReloadConfigRequest (PERMISSION_DENIED
unless the server was started with --enable_reload_config_rpc). grpc.health.v1:
SERVING once every configured model has an AVAILABLE version, NOT_SERVING before that and
while shutting down. Errors abort the call with the ServingError's status code and message.

The status and metadata responses are built here and reused by the REST API, as TF Serving's
REST handler calls the same implementations.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common import tensors
from serving.errors import InternalError, InvalidArgumentError, PermissionDeniedError, ServingError
from serving.metrics import ServerMetrics
from serving.model_manager import ModelManager

logger = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
HEALTH_SERVICE_NAMES = (
    "",
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)


REQUEST_ID_METADATA = "x-request-id"


def request_id_of(context: grpc.ServicerContext) -> str | None:
    """The caller's request id (gRPC metadata `x-request-id`, sent by the gateway), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            return value[:128]
    return None


def version_choice(model_spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for; (None, None) means the latest."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return int(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def status_response(
    manager: ModelManager, model_spec: model_pb2.ModelSpec
) -> get_model_status_pb2.GetModelStatusResponse:
    version, label = version_choice(model_spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.version_statuses(model_spec.name, version, label):
        entry = response.model_version_status.add(version=status.version, state=int(status.state))
        entry.status.SetInParent()  # TF Serving always sends a status, OK included
        if status.error is not None:
            entry.status.error_code = status.error.code_number
            entry.status.error_message = status.error.message
    return response


def metadata_response(
    manager: ModelManager, model_spec: model_pb2.ModelSpec, metadata_fields: list[str]
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not metadata_fields:
        raise InvalidArgumentError("GetModelMetadataRequest must specify at least one metadata_field")
    for metadata_field in metadata_fields:
        if metadata_field != SIGNATURE_DEF_FIELD:
            raise InvalidArgumentError(f"Metadata field {metadata_field} is not supported")
    version, label = version_choice(model_spec)
    with manager.servable(model_spec.name, version, label) as servable:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    # Method names are the gRPC service's (CamelCase), hence the N802 exemptions.
    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        *,
        as_tensor_content: bool = False,
        max_tensor_bytes: int | None = None,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._as_tensor_content = as_tensor_content
        self._max_tensor_bytes = max_tensor_bytes

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        started = time.monotonic()
        status = "OK"
        self._metrics.in_flight_requests.increment("GRPC")
        try:
            return self._predict(request)
        except ServingError as error:
            status = error.code_name
            # The gateway sends its request id as metadata: the two logs meet on it.
            logger.warning(
                "Predict %s request_id=%s: %s", status, request_id_of(context) or "-", error.message[:500]
            )
            context.abort(error.code, error.message)
        finally:
            self._metrics.in_flight_requests.increment("GRPC", amount=-1)
            known = (
                request.model_spec.name if request.model_spec.name in self._manager.model_names() else None
            )
            self._metrics.record_request(
                known, status, time.monotonic() - started, api="Predict", entrypoint="GRPC"
            )

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        inputs = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = tensors.to_numpy(proto, self._max_tensor_bytes)
            except tensors.TensorError as error:
                raise InvalidArgumentError(f"tensor parsing error: {alias} ({error})") from error
        version, label = version_choice(request.model_spec)
        with self._manager.servable(request.model_spec.name, version, label) as servable:
            signature_name, outputs = self._manager.predict(
                servable, request.model_spec.signature_name, inputs, list(request.output_filter)
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature_name
        for alias, array in outputs.items():
            try:
                proto = tensors.to_tensor_proto(array, as_tensor_content=self._as_tensor_content)
            except tensors.TensorError as error:
                raise InternalError(f"output {alias}: {error}") from error
            response.outputs[alias].CopyFrom(proto)
        return response

    def GetModelMetadata(  # noqa: N802
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        try:
            if not request.HasField("model_spec"):
                raise InvalidArgumentError("Missing ModelSpec")
            return metadata_response(self._manager, request.model_spec, list(request.metadata_field))
        except ServingError as error:
            context.abort(error.code, error.message)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, *, allow_reload: bool = False) -> None:
        self._manager = manager
        self._allow_reload = allow_reload

    def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> Any:
        try:
            if not request.HasField("model_spec"):
                raise InvalidArgumentError("Missing ModelSpec")
            return status_response(self._manager, request.model_spec)
        except ServingError as error:
            context.abort(error.code, error.message)

    def HandleReloadConfigRequest(  # noqa: N802
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> Any:
        try:
            if not self._allow_reload:
                # Loading a SavedModel runs its graph: changing models is the operator's (the
                # config file's) business unless the server was started to take it over RPC.
                raise PermissionDeniedError(
                    "HandleReloadConfigRequest is disabled on this server: change the model config "
                    "file instead, or start the server with --enable_reload_config_rpc"
                )
            self._manager.apply_config(request.config)
        except ServingError as error:
            logger.error("ReloadConfig failed: %s", error.message)
            # TF Serving fills the response status and fails the call with the same code.
            context.abort(error.code, error.message)
        logger.info("Applied a new model config from HandleReloadConfigRequest")
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # error_code OK, as TF Serving answers
        return response


class HealthReporter:
    """Keeps grpc.health.v1 in step with the models: SERVING once all have an AVAILABLE version."""

    def __init__(self, manager: ModelManager) -> None:
        self.servicer = health.HealthServicer()
        self._manager = manager
        self._shutting_down = False
        self.update()

    def update(self) -> None:
        serving = self._manager.all_models_available() and not self._shutting_down
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in HEALTH_SERVICE_NAMES:
            self.servicer.set(service, status)

    def shut_down(self) -> None:
        self._shutting_down = True
        self.servicer.enter_graceful_shutdown()


def _ssl_config_class() -> Any:
    """TF Serving's SSLConfig message (tensorflow_serving/config/ssl_config.proto), which the
    tensorflow-serving-api wheel does not ship: the same four fields, built with protobuf."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="aidetect/tensorflow_serving_ssl_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    message = file_proto.message_type.add(name="SSLConfig")
    for number, (name, kind) in enumerate(
        [
            ("server_key", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
            ("server_cert", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
            ("custom_ca", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
            ("client_verify", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
        ],
        start=1,
    ):
        message.field.add(
            name=name, number=number, type=kind, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def server_credentials(ssl_config_text: str) -> grpc.ServerCredentials:
    """gRPC server credentials from an SSLConfig text proto, as TF Serving builds them: the PEM
    key and certificate; `custom_ca` the roots that client certificates must chain to; with
    `client_verify` a client without a valid certificate is refused (mutual TLS)."""
    try:
        config = text_format.Parse(ssl_config_text, _ssl_config_class()())
    except text_format.ParseError as error:
        raise ValueError(f"the SSL config is not an SSLConfig text proto: {error}") from error
    if not config.server_key or not config.server_cert:
        raise ValueError("the SSL config needs server_key and server_cert (PEM text)")
    if config.client_verify and not config.custom_ca:
        raise ValueError("client_verify needs custom_ca: the roots that client certificates must chain to")
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's --grpc_channel_arguments: `key=value[,key=value...]`, a value that parses as an
    integer passed as one (e.g. grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb)."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


def create_grpc_server(
    manager: ModelManager,
    metrics: ServerMetrics,
    health_reporter: HealthReporter,
    *,
    address: str,
    max_message_bytes: int,
    max_threads: int,
    as_tensor_content: bool = False,
    allow_reload: bool = False,
    credentials: grpc.ServerCredentials | None = None,
    channel_arguments: str = "",
    socket_path: str = "",
) -> grpc.Server:
    """A started-later gRPC server bound to `address` (raises RuntimeError when the port is taken),
    and to the Unix socket `socket_path` when given; TLS when `credentials` are given;
    `channel_arguments` as TF Serving's --grpc_channel_arguments."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Fail on a taken port instead of silently sharing it with another server.
            ("grpc.so_reuseport", 0),
            *parse_channel_arguments(channel_arguments),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        # A decoded tensor may be as large as a message could carry it in full, no larger.
        PredictionServicer(
            manager, metrics, as_tensor_content=as_tensor_content, max_tensor_bytes=max_message_bytes
        ),
        server,
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(manager, allow_reload=allow_reload), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_reporter.servicer, server)
    bound = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if bound == 0:
        raise RuntimeError(f"could not bind the gRPC server to {address}")
    if socket_path and server.add_insecure_port(f"unix:{socket_path}") == 0:
        raise RuntimeError(f"could not bind the gRPC server to the Unix socket {socket_path}")
    return server
