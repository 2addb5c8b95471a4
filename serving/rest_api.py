"""TF Serving's REST API (Starlette, served by uvicorn in the same process as gRPC).

    GET  /v1/models/<name>[/versions/<n>|/labels/<label>]            model status
    GET  /v1/models/<name>[/versions/<n>|/labels/<label>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<n>|/labels/<label>]:predict    row ("instances") or
                                                                     columnar ("inputs") form
    GET  <prometheus path from monitoring.config>                    metrics text

Paths are matched with TF Serving's own regular expressions (case-insensitive). JSON
follows TF Serving's json_tensor rules: a signature with one input takes bare values, several
take objects keyed by input name; `{"b64": "..."}` is a DT_STRING value; the answer is
`predictions` (row form: one entry per instance, an object per row when there are several
outputs) or `outputs` (columnar). Errors are `{"error": "..."}` with TF Serving's HTTP codes
(serving.errors.http_status), mapped in one handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from typing import Any

import numpy as np
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from common.signatures import SERVING_SIGNATURE
from serving.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ServingError,
    UnimplementedError,
    http_status,
)
from serving.grpc_api import SIGNATURE_DEF_FIELD, metadata_response, status_response
from serving.metrics import ServerMetrics
from serving.model_manager import ModelManager
from serving.request_checks import require_model_name
from serving.runtime import SignatureSpec, TensorSpec

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(
    rf"/v1/models/([^/:]+){_VERSION_OR_LABEL}:(classify|regress|predict)", re.IGNORECASE
)
STATUS_PATH = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION_OR_LABEL}(?:/(metadata))?", re.IGNORECASE)


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        try:
            spec.version.value = int(version)
        except ValueError:
            raise InvalidArgumentError(f"Failed to convert version: {version} to numeric.") from None
    elif label is not None:
        spec.version_label = label
    return spec


# Python's JSON errors in the words of rapidjson, TF Serving's parser (GetParseError_En).
_RAPIDJSON_WORDS = (
    ("Expecting value", "Invalid value."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)


def _parse_error_words(error: json.JSONDecodeError) -> str:
    if not error.doc.strip():
        return "The document is empty."
    for python_words, rapidjson_words in _RAPIDJSON_WORDS:
        if error.msg.startswith(python_words):
            return f"{rapidjson_words} at offset: {error.pos}"
    return f"{error.msg} at offset: {error.pos}"


def _data_type_string(spec: TensorSpec) -> str:
    """TensorFlow's DataTypeString (`float`, `uint8`, ...), as TF Serving's JSON errors print it."""
    return spec.dtype_name.removeprefix("DT_").lower()


def _first_non_number(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            found = _first_non_number(item)
            if found is not None:
                return found
        return None
    return None if isinstance(value, int | float) and not isinstance(value, bool) else value


def _json_response(document: Any, status_code: int = 200) -> Response:
    # TF Serving pretty-prints its JSON; clients parse it either way.
    return Response(json.dumps(document, indent=1), status_code=status_code, media_type="application/json")


def _message_to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    return result


# ---------------------------------------------------------------- JSON -> numpy


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _string_leaf(value: Any, alias: str) -> bytes:
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"Unable to base64 decode the value of input {alias}: {error}"
            ) from error
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgumentError(
        f'input {alias}: expected a string or {{"b64": ...}}, got {type(value).__name__}'
    )


def _string_array(value: Any, alias: str) -> np.ndarray:
    def walk(node: Any, depth: int, shape: list[int], flat: list[bytes]) -> None:
        if isinstance(node, list):
            if len(shape) <= depth:
                shape.append(len(node))
            elif shape[depth] != len(node):
                raise InvalidArgumentError(f"input {alias}: lists of different lengths at depth {depth}")
            for item in node:
                walk(item, depth + 1, shape, flat)
        else:
            if len(shape) != depth:
                raise InvalidArgumentError(f"input {alias}: values at different depths")
            flat.append(_string_leaf(node, alias))

    shape: list[int] = []
    flat: list[bytes] = []
    walk(value, 0, shape, flat)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _numeric_array(value: Any, alias: str, spec: TensorSpec) -> np.ndarray:
    dtype = spec.numpy_dtype
    try:
        raw = np.asarray(value)
    except ValueError as error:
        raise InvalidArgumentError(f"input {alias}: the lists are ragged ({error})") from error
    if raw.size and raw.dtype.kind not in "biuf":
        offending = json.dumps(_first_non_number(value))
        raise InvalidArgumentError(f"JSON Value: {offending} not of expected type: {_data_type_string(spec)}")
    if raw.size and dtype.kind in "iu":
        if raw.dtype.kind == "f":
            raise InvalidArgumentError(
                f"input {alias}: floating point values where {spec.dtype_name} is expected"
            )
        limits = np.iinfo(dtype)
        if raw.min() < limits.min or raw.max() > limits.max:
            raise InvalidArgumentError(f"input {alias}: values out of range for {spec.dtype_name}")
    if raw.size and dtype.kind == "b" and raw.dtype.kind != "b":
        raise InvalidArgumentError(f"input {alias}: expected booleans")
    return raw.astype(dtype)


def json_to_array(value: Any, alias: str, spec: TensorSpec) -> np.ndarray:
    if spec.numpy_dtype == np.dtype(object):
        return _string_array(value, alias)
    return _numeric_array(value, alias, spec)


def inputs_from_json(document: dict[str, Any], spec: SignatureSpec) -> tuple[dict[str, np.ndarray], bool]:
    """(inputs by alias, True for the row format) from a predict request body."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        raise InvalidArgumentError(
            "JSON Value: not formatted correctly. "
            "Expecting object with 'instances' or 'inputs' key (exactly one)."
        )
    aliases = sorted(spec.inputs)
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgumentError("Expecting 'instances' to be an list/array")
        if instances and all(_is_named_object(instance) for instance in instances):
            columns: dict[str, list[Any]] = {}
            for instance in instances:
                if set(instance) != set(columns or instance):
                    raise InvalidArgumentError("instances must all name the same inputs")
                for alias, value in instance.items():
                    columns.setdefault(alias, []).append(value)
            named = columns
        elif len(aliases) == 1:
            named = {aliases[0]: instances}
        else:
            raise InvalidArgumentError(
                f"the signature has inputs {aliases}: every instance must be an object keyed by input name"
            )
        return _arrays(named, spec), True
    inputs = document["inputs"]
    if _is_named_object(inputs):
        named = inputs
    elif len(aliases) == 1:
        named = {aliases[0]: inputs}
    else:
        raise InvalidArgumentError(
            f"the signature has inputs {aliases}: 'inputs' must be an object keyed by input name"
        )
    return _arrays(named, spec), False


def _arrays(named: dict[str, Any], spec: SignatureSpec) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for alias, value in named.items():
        tensor_spec = spec.inputs.get(alias)
        if tensor_spec is None:
            raise InvalidArgumentError(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(spec.inputs))}}}."
            )
        arrays[alias] = json_to_array(value, alias, tensor_spec)
    return arrays


# ---------------------------------------------------------------- numpy -> JSON


def _json_value(array: np.ndarray, alias: str) -> Any:
    if array.dtype == np.dtype(object) or array.dtype.kind == "S":
        if alias.endswith("_bytes"):  # TF Serving: binary outputs are named *_bytes and sent as b64
            return np.vectorize(lambda item: {"b64": base64.b64encode(item).decode()}, otypes=[object])(
                array
            ).tolist()
        return np.vectorize(lambda item: item.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        # Shortest text that reads back as the same float32 (0.3, not 0.30000001192092896).
        # np.vectorize hands over Python floats, so go back through the array's own dtype first.
        float_type = array.dtype.type
        return np.vectorize(lambda item: float(str(float_type(item))), otypes=[object])(array).tolist()
    return array.tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    if not row_format:
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"outputs": _json_value(array, alias)}
        return {"outputs": {alias: _json_value(array, alias) for alias, array in outputs.items()}}
    sizes = {array.shape[0] if array.ndim else -1 for array in outputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise InvalidArgumentError(
            "Tensors in the output do not all have the same 0th dimension: use the columnar 'inputs' form"
        )
    values = {alias: _json_value(array, alias) for alias, array in outputs.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    (rows,) = sizes
    return {"predictions": [{alias: column[row] for alias, column in values.items()} for row in range(rows)]}


# ---------------------------------------------------------------- routes


class RestApi:
    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        max_body_bytes: int | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._timeout_seconds = timeout_seconds  # --rest_api_timeout_in_ms; None: no deadline

    async def handle(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)  # a bad version first, as TF Serving
            if verb.lower() != "predict":
                raise UnimplementedError(f"{verb} is not supported by the local model server; use predict")
            return await self._predict(request, spec)
        if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
            name, version, label, metadata = match.groups()
            require_model_name(name or "")
            spec = _model_spec(name, version, label)
            if metadata:
                response = await run_in_threadpool(
                    metadata_response, self._manager, spec, [SIGNATURE_DEF_FIELD]
                )
                document = _message_to_dict(response)
                any_map = response.metadata[SIGNATURE_DEF_FIELD]
                signature_map = _message_to_dict(_unpack_signature_map(any_map))
                document["metadata"] = {SIGNATURE_DEF_FIELD: signature_map}
                return _json_response(document)
            return _json_response(
                _message_to_dict(await run_in_threadpool(status_response, self._manager, spec))
            )
        raise InvalidArgumentError(f"Malformed request: {method} {path}")

    async def _predict(self, request: Request, spec: model_pb2.ModelSpec) -> Response:
        started = time.monotonic()
        status = "OK"
        self._metrics.in_flight_requests.increment("REST")
        try:
            body = await self._read_body(request)
            try:
                answer = await asyncio.wait_for(
                    run_in_threadpool(self._predict_blocking, body, spec), self._timeout_seconds
                )
            except TimeoutError:
                raise DeadlineExceededError(
                    f"Request timed out after {(self._timeout_seconds or 0) * 1000:.0f} ms"
                ) from None
            return _json_response(answer)
        except ServingError as error:
            status = error.code_name
            raise
        finally:
            self._metrics.in_flight_requests.increment("REST", amount=-1)
            known = spec.name if spec.name in self._manager.model_names() else None
            # TF Serving's REST handler labels its requests api="predict", lower case.
            self._metrics.record_request(
                known, status, time.monotonic() - started, api="predict", entrypoint="REST"
            )

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused once it is over the limit (the gRPC message limit): memory stays bounded."""
        limit = self._max_body_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if limit is not None and len(body) > limit:
                raise InvalidArgumentError(f"the request body is over the limit of {limit:,} bytes")
        return bytes(body)

    def _predict_blocking(self, body: bytes, spec: model_pb2.ModelSpec) -> dict[str, Any]:
        try:
            document = json.loads(body)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"JSON Parse error: {_parse_error_words(error)}") from error
        except (ValueError, RecursionError) as error:  # RecursionError: arrays nested too deep
            raise InvalidArgumentError(f"JSON Parse error: {error}") from error
        if not isinstance(document, dict):
            raise InvalidArgumentError("JSON Value: not formatted correctly. Expecting an object")
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidArgumentError("'signature_name' key must be a string value.")
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        with self._manager.servable(spec.name, version, label) as servable:
            signature_key = signature_name or SERVING_SIGNATURE
            signature_spec = servable.signatures.get(signature_key)
            if signature_spec is None:
                raise InvalidArgumentError(
                    f'Serving signature name: "{signature_key}" not found in signature def'
                )
            inputs, row_format = inputs_from_json(document, signature_spec)
            _, outputs = self._manager.predict(servable, signature_name, inputs)
        return outputs_to_json(outputs, row_format)


def _unpack_signature_map(any_message: Any) -> get_model_metadata_pb2.SignatureDefMap:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    any_message.Unpack(signature_map)
    return signature_map


def create_rest_app(
    manager: ModelManager,
    metrics: ServerMetrics,
    prometheus_path: str | None,
    max_body_bytes: int | None = None,
    timeout_seconds: float | None = None,
) -> Starlette:
    api = RestApi(manager, metrics, max_body_bytes, timeout_seconds)

    async def serving_error(request: Request, error: Exception) -> Response:
        # Registered for ServingError only; the fallback keeps the type checker and odd callers honest.
        if isinstance(error, ServingError):
            return JSONResponse({"error": error.message}, status_code=http_status(error))
        return JSONResponse({"error": str(error)}, status_code=500)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render())

    routes = [Route("/v1/{rest:path}", api.handle, methods=["GET", "POST"])]
    if prometheus_path:
        routes.insert(0, Route(prometheus_path, prometheus, methods=["GET"]))
    return Starlette(routes=routes, exception_handlers={ServingError: serving_error})
