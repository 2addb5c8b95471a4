"""The gateway's client of the model server, written against TF Serving's own gRPC API.

One long-lived `grpc.aio` channel (opened in the app's lifespan, closed on shutdown), a deadline on
every call, retries with backoff only on UNAVAILABLE, bounded message sizes. Works unchanged
against the real TF Serving and the local server (ARCHITECTURE.md contract 4).

Signature and tensor names: the expected ones come from common/signatures.py and are checked
against the model's own GetModelMetadata answer; the input key is taken from that answer.
The decision threshold is one of the model's outputs, so the gateway keeps no copy of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common.preprocessing import IMAGE_SIZE
from common.signatures import (
    EXPLAIN_GRID,
    EXPLAIN_SIGNATURE,
    IMAGE_INPUT,
    OUTPUT_HEATMAP,
    OUTPUT_LABEL,
    OUTPUT_LOGIT,
    OUTPUT_PROBABILITY,
    OUTPUT_THRESHOLD,
)
from common.tensors import TensorError, dtype_name, predict_request, to_numpy
from gateway.errors import (
    ExplainUnavailableError,
    GatewayError,
    ModelUnavailableError,
    ModelVersionNotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.traffic import CanarySplit

logger = logging.getLogger(__name__)

REQUIRED_OUTPUTS = (OUTPUT_PROBABILITY, OUTPUT_THRESHOLD, OUTPUT_LABEL)
OPTIONAL_OUTPUTS = (OUTPUT_LOGIT,)
AVAILABLE_STATE = "AVAILABLE"
SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving serves
# After the model server restarts, reconnect within a second or two, not grpc's default minutes.
RECONNECT_BACKOFF_MILLISECONDS = (200, 1000)


@dataclass(frozen=True)
class ModelTarget:
    """Which version of the model a request goes to: a label, a number, or (neither) the latest."""

    version: int | None = None
    label: str | None = None
    pinned: bool = False  # chosen by the request (header / query) rather than by settings

    def __post_init__(self) -> None:
        if self.version is not None and self.label:
            raise ValueError("a model target has a version or a label, not both")

    def describe(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        if self.label:
            return f"label {self.label!r}"
        return "the latest version"

    @property
    def version_label(self) -> str:
        """For responses and the model_info metric: the label, or how the version was chosen."""
        if self.label:
            return self.label
        return "pinned" if self.version is not None else "latest"

    def fill(self, model_spec: model_pb2.ModelSpec) -> None:
        if self.version is not None:
            model_spec.version.value = self.version
        elif self.label:
            model_spec.version_label = self.label


@dataclass(frozen=True)
class SignatureMetadata:
    """What GetModelMetadata says about the signature the gateway calls."""

    model_name: str
    model_version: int
    signature_name: str
    input_name: str
    input_dtype: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    signature_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    probability: float  # calibrated P(AI-generated), 0..1
    logit: float | None
    threshold: float
    label: int  # 1 = AI-generated (probability >= threshold), from the model

    @property
    def label_name(self) -> str:
        return "ai" if self.label == 1 else "real"


@dataclass(frozen=True)
class PredictionBatch:
    model_name: str
    model_version: int
    signature_name: str
    version_label: str
    predictions: list[Prediction] = field(default_factory=list)
    # float32 [N, 8, 8] from the explain signature, when asked for (?explain=true)
    heatmaps: np.ndarray | None = None


@dataclass(frozen=True)
class VersionStatus:
    """Readiness of one target: the version its label resolves to and that version's state."""

    target: str
    version_label: str
    model_version: int | None
    state: str
    available: bool
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def translate_rpc_error(
    error: grpc.aio.AioRpcError,
    target: ModelTarget,
    settings: Settings,
    deadline_seconds: float | None = None,
) -> GatewayError:
    """A gRPC failure as the gateway error (and so the HTTP status) it means for the client; the
    model server's status code goes along (`upstream_status`) for the gateway's log."""
    translated = _translate(error, target, settings, deadline_seconds or settings.request_timeout_seconds)
    translated.upstream_status = error.code().name
    return translated


def _translate(
    error: grpc.aio.AioRpcError, target: ModelTarget, settings: Settings, deadline_seconds: float
) -> GatewayError:
    code = error.code()
    details = error.details() or code.name
    retry_after = {"Retry-After": str(settings.retry_after_seconds)}
    name = settings.model_name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeoutError(
            f"the model server did not answer within {deadline_seconds:g} s (retries included)"
        )
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) and target.pinned:
        # TF Serving: NOT_FOUND for an unknown version, INVALID_ARGUMENT for an unknown label.
        return ModelVersionNotFoundError(f"model {name!r} has no {target.describe()} being served: {details}")
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,  # not loaded (yet)
        grpc.StatusCode.INVALID_ARGUMENT,  # the configured label is not defined on the server
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # overloaded: batching queue full
        grpc.StatusCode.CANCELLED,
    ):
        return ModelUnavailableError(
            f"model {name!r} ({target.describe()}) is unavailable: {details}", headers=retry_after
        )
    return UpstreamError(f"the model server failed ({code.name}): {details}")


def default_target(settings: Settings) -> ModelTarget:
    return ModelTarget(label=settings.version_label or None)


def routed_targets(settings: Settings, split: CanarySplit) -> list[ModelTarget]:
    """Every target unpinned requests can go to: the default label, and the canary label when on."""
    targets = [default_target(settings)]
    if split.enabled:
        targets.append(ModelTarget(label=split.label))
    return targets


# The gateway's request id, set per request by the request-context middleware (gateway/main.py)
# and sent to the model server with every call of that request.
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("aidetect_request_id", default=None)
REQUEST_ID_METADATA = "x-request-id"


def content_share(content: bytes) -> float:
    """Where an image falls in [0, 1): from a hash of its bytes, so the same image always falls at
    the same place and meets the same version for a given canary share (and, as the share grows,
    an image that met the canary keeps meeting it)."""
    return int.from_bytes(hashlib.sha256(content).digest()[:8], "big") / 2.0**64


def choose_target(
    settings: Settings,
    split: CanarySplit,
    version: int | None = None,
    label: str | None = None,
    content: bytes | None = None,
    chance: Callable[[], float] = random.random,
) -> ModelTarget:
    """A pinned version or label wins; otherwise `split.percent` of requests go to the canary label:
    chosen by the image's bytes when there is one (sticky), else at random."""
    if version is not None or label:
        return ModelTarget(version=version, label=label, pinned=True)
    if (
        split.enabled
        and (content_share(content) if content is not None else chance()) * 100.0 < split.percent
    ):
        return ModelTarget(label=split.label)
    return default_target(settings)


@dataclass(frozen=True)
class Routing:
    """Where a request's images go: its pins (header or query), or the canary split by content."""

    settings: Settings
    split: CanarySplit
    version: int | None = None
    label: str | None = None

    def target(self, content: bytes | None = None) -> ModelTarget:
        return choose_target(self.settings, self.split, self.version, self.label, content)


class ModelClient:
    """Async client of one model on a TF-Serving-compatible server."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._channel: grpc.aio.Channel | None = None
        self._prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub | None = None
        self._model_stub: model_service_pb2_grpc.ModelServiceStub | None = None
        self._metadata_cache: dict[ModelTarget, tuple[float, SignatureMetadata]] = {}
        self._thresholds: dict[int, float] = {}
        self._random = random.Random()

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel (lazily connecting: the model server may come up later)."""
        if self._channel is not None:
            return
        options = [
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MILLISECONDS[0]),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MILLISECONDS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MILLISECONDS[1]),
            ("grpc.keepalive_time_ms", 30_000),
            # Balance each call over every address the target resolves to (a headless Service's
            # pods), not one long-lived connection to whichever answered first; a dead address
            # leaves the rotation at once and comes back once it accepts connections again.
            (
                "grpc.service_config",
                json.dumps({"loadBalancingConfig": [{self.settings.model_server_load_balancing: {}}]}),
            ),
            # Re-resolve the name at least this often (new pods join the rotation).
            ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        ]
        self._channel = grpc.aio.insecure_channel(self.settings.model_server_address, options=options)
        self._prediction_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._prediction_stub = self._model_stub = None

    # -- calls --------------------------------------------------------------------------------

    async def metadata(
        self, target: ModelTarget, *, refresh: bool = False, retries: int | None = None
    ) -> SignatureMetadata:
        """The configured signature's metadata for `target`, cached for `metadata_cache_seconds`."""
        now = time.monotonic()
        cached = self._metadata_cache.get(target)
        if cached is not None and not refresh and cached[0] > now:
            return cached[1]
        stub = self._stubs()[0]
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        request.model_spec.name = self.settings.model_name
        target.fill(request.model_spec)
        response = await self._call(stub.GetModelMetadata, request, target, retries=retries)
        metadata = self._parse_metadata(response)
        self._metadata_cache[target] = (now + self.settings.metadata_cache_seconds, metadata)
        return metadata

    async def predict(
        self, images: np.ndarray, target: ModelTarget, explain: bool = False
    ) -> PredictionBatch:
        """uint8 [N, 256, 256, 3] images -> one prediction per image, in one Predict call; with
        `explain`, through the explain signature, which adds a heatmap per image."""
        expected_shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected_shape:
            raise ValueError(
                f"expected uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.dtype} {images.shape}"
            )
        started = time.perf_counter()
        outcome = "error"
        try:
            batch = await self._predict(images, target, explain)
            outcome = "ok"
            return batch
        finally:
            label = "pinned" if target.pinned else target.version_label
            self.metrics.observe_model_request(
                self.settings.model_name, label, outcome, time.perf_counter() - started
            )

    async def _predict(self, images: np.ndarray, target: ModelTarget, explain: bool) -> PredictionBatch:
        metadata = await self.metadata(target)
        stub = self._stubs()[0]
        wanted = [name for name in (*REQUIRED_OUTPUTS, *OPTIONAL_OUTPUTS) if name in metadata.output_names]
        signature_name = self.settings.signature_name
        if explain:
            if EXPLAIN_SIGNATURE not in metadata.signature_names:
                raise ExplainUnavailableError(
                    f"model version {metadata.model_version} was exported without the "
                    f"{EXPLAIN_SIGNATURE!r} signature, so it cannot show where it looked; "
                    "ask without explain=true, or pin a version that has it"
                )
            signature_name, wanted = EXPLAIN_SIGNATURE, [*wanted, OUTPUT_HEATMAP]
        request = predict_request(
            self.settings.model_name, {metadata.input_name: images}, signature_name, output_filter=wanted
        )
        target.fill(request.model_spec)
        response = await self._call(stub.Predict, request, target)
        version = response.model_spec.version.value if response.model_spec.HasField("version") else 0
        model_version = int(version or metadata.model_version)
        predictions = self._parse_predictions(response, expected_rows=len(images))
        self.metrics.observe_model_version(self.settings.model_name, model_version, target.version_label)
        return PredictionBatch(
            model_name=response.model_spec.name or self.settings.model_name,
            model_version=model_version,
            signature_name=response.model_spec.signature_name or signature_name,
            version_label=target.version_label,
            predictions=predictions,
            heatmaps=self._parse_heatmaps(response, len(images)) if explain else None,
        )

    @staticmethod
    def _parse_heatmaps(response: predict_pb2.PredictResponse, expected_rows: int) -> np.ndarray:
        grid = EXPLAIN_GRID
        if OUTPUT_HEATMAP not in response.outputs:
            raise UpstreamError(f"the model's answer lacks the output {OUTPUT_HEATMAP!r}")
        try:
            heatmaps = to_numpy(response.outputs[OUTPUT_HEATMAP]).astype(np.float32)
        except TensorError as error:
            raise UpstreamError(f"output {OUTPUT_HEATMAP!r}: {error}") from error
        if heatmaps.shape != (expected_rows, grid, grid) or not np.all(np.isfinite(heatmaps)):
            raise UpstreamError(
                f"output {OUTPUT_HEATMAP!r} is {heatmaps.dtype} {heatmaps.shape}, "
                f"expected finite float [{expected_rows}, {grid}, {grid}]"
            )
        return heatmaps

    async def version_status(self, target: ModelTarget) -> VersionStatus:
        """Resolve `target` to a version (GetModelMetadata) and ask that version's state.

        Two calls because GetModelStatus takes a version number (TF Serving does not resolve
        labels there); no retries, a short deadline: readiness probes want a quick answer.
        """
        try:
            metadata = await self.metadata(target, refresh=True, retries=0)
            stub = self._stubs()[1]
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = self.settings.model_name
            request.model_spec.version.value = metadata.model_version
            response = await self._call(
                stub.GetModelStatus,
                request,
                target,
                retries=0,
                timeout=self.settings.readiness_timeout_seconds,
            )
        except GatewayError as error:
            return VersionStatus(
                target.describe(), target.version_label, None, "UNREACHABLE", False, error.message
            )
        states = {status.version: status for status in response.model_version_status}
        status = states.get(metadata.model_version)
        if status is None:
            message = f"version {metadata.model_version} has no status"
            return VersionStatus(
                target.describe(), target.version_label, metadata.model_version, "UNKNOWN", False, message
            )
        state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
        return VersionStatus(
            target.describe(),
            target.version_label,
            metadata.model_version,
            state,
            state == AVAILABLE_STATE,
            status.status.error_message,
        )

    async def readiness(self, split: CanarySplit) -> list[VersionStatus]:
        """The state of every target unpinned requests can go to (the default label, and the canary)."""
        targets = routed_targets(self.settings, split)
        return list(await asyncio.gather(*(self.version_status(target) for target in targets)))

    async def threshold(self, target: ModelTarget) -> tuple[int, float]:
        """(version, decision threshold) of `target`, read from the model's own `threshold` output.

        The threshold is an output of every prediction, not a metadata field, so GET /v1/model asks
        for one prediction of a black image; the answer is cached per version.
        """
        metadata = await self.metadata(target)
        cached = self._thresholds.get(metadata.model_version)
        if cached is not None:
            return metadata.model_version, cached
        probe = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        batch = await self.predict(probe, target)
        self._thresholds[batch.model_version] = batch.predictions[0].threshold
        return batch.model_version, batch.predictions[0].threshold

    # -- internals ----------------------------------------------------------------------------

    def _stubs(
        self,
    ) -> tuple[prediction_service_pb2_grpc.PredictionServiceStub, model_service_pb2_grpc.ModelServiceStub]:
        if self._prediction_stub is None or self._model_stub is None:
            raise RuntimeError("ModelClient.start() was not called (the app's lifespan opens the channel)")
        return self._prediction_stub, self._model_stub

    async def _call(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        target: ModelTarget,
        *,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One RPC under one deadline for all its attempts (the 504 then says the truth); only
        UNAVAILABLE is retried (the call never started), and only while the deadline leaves time.
        The request id goes along as gRPC metadata (`x-request-id`), for the model server's log."""
        attempts = 1 + (self.settings.max_retries if retries is None else retries)
        total = timeout or self.settings.request_timeout_seconds
        deadline = time.monotonic() + total
        request_id = CURRENT_REQUEST_ID.get()
        metadata = ((REQUEST_ID_METADATA, request_id),) if request_id else None
        for attempt in range(attempts):
            try:
                return await method(
                    request, timeout=max(0.001, deadline - time.monotonic()), metadata=metadata
                )
            except grpc.aio.AioRpcError as error:
                self.metrics.upstream_errors.labels(code=error.code().name).inc()
                # Exponential backoff with jitter, so many gateways do not retry in step.
                delay = self.settings.retry_backoff_seconds * (2**attempt) * self._random.uniform(0.5, 1.0)
                if (
                    error.code() != grpc.StatusCode.UNAVAILABLE
                    or attempt == attempts - 1
                    or time.monotonic() + delay >= deadline
                ):
                    raise translate_rpc_error(error, target, self.settings, total) from error
                self.metrics.upstream_retries.inc()
                logger.warning(
                    "model server unavailable (%s); retry %d in %.2f s request_id=%s",
                    error.details(),
                    attempt + 1,
                    delay,
                    request_id,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _parse_metadata(self, response: get_model_metadata_pb2.GetModelMetadataResponse) -> SignatureMetadata:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if SIGNATURE_DEF_FIELD not in response.metadata or not response.metadata[SIGNATURE_DEF_FIELD].Unpack(
            signature_map
        ):
            raise UpstreamError("the model server's metadata has no signature_def map")
        signatures = signature_map.signature_def
        name = self.settings.signature_name
        if name not in signatures:
            raise UpstreamError(f"the model has no signature {name!r}; it has {sorted(signatures)}")
        signature = signatures[name]
        inputs = dict(signature.inputs)
        if IMAGE_INPUT in inputs:
            input_name = IMAGE_INPUT
        elif len(inputs) == 1:
            input_name = next(iter(inputs))
        else:
            raise UpstreamError(
                f"signature {name!r} has inputs {sorted(inputs)}, none of them {IMAGE_INPUT!r}"
            )
        input_info = inputs[input_name]
        if input_info.dtype != types_pb2.DT_UINT8:
            raise UpstreamError(
                f"signature {name!r} input {input_name!r} is {dtype_name(input_info.dtype)}, not DT_UINT8"
            )
        outputs = tuple(sorted(signature.outputs))
        missing = [output for output in REQUIRED_OUTPUTS if output not in outputs]
        if missing:
            raise UpstreamError(f"signature {name!r} lacks the outputs {missing} (it has {list(outputs)})")
        return SignatureMetadata(
            model_name=response.model_spec.name or self.settings.model_name,
            model_version=int(response.model_spec.version.value),
            signature_name=name,
            input_name=input_name,
            input_dtype=dtype_name(input_info.dtype),
            input_shape=tuple(dimension.size for dimension in input_info.tensor_shape.dim),
            output_names=outputs,
            # TF2 SavedModels list an "__saved_model_init_op" pseudo signature: not callable, not shown.
            signature_names=tuple(sorted(name for name in signatures if not name.startswith("__"))),
        )

    @staticmethod
    def _parse_predictions(response: predict_pb2.PredictResponse, expected_rows: int) -> list[Prediction]:
        columns: dict[str, np.ndarray] = {}
        for name in (*REQUIRED_OUTPUTS, *OPTIONAL_OUTPUTS):
            if name not in response.outputs:
                if name in REQUIRED_OUTPUTS:
                    raise UpstreamError(f"the model's answer lacks the output {name!r}")
                continue
            try:
                column = to_numpy(response.outputs[name]).reshape(-1)
            except TensorError as error:
                raise UpstreamError(f"output {name!r}: {error}") from error
            if column.size != expected_rows:
                raise UpstreamError(f"output {name!r} has {column.size} values for {expected_rows} images")
            columns[name] = column
        logits: Sequence[float | None] = (
            [float(value) for value in columns[OUTPUT_LOGIT]]
            if OUTPUT_LOGIT in columns
            else [None] * expected_rows
        )
        return [
            Prediction(
                probability=float(columns[OUTPUT_PROBABILITY][row]),
                logit=logits[row],
                threshold=float(columns[OUTPUT_THRESHOLD][row]),
                label=int(columns[OUTPUT_LABEL][row]),
            )
            for row in range(expected_rows)
        ]
