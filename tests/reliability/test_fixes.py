"""Fast, in-process regression tests of what the reliability tests found and what was fixed.

Each was a 500 / UNKNOWN for bad input, or unbounded memory, before the fix (docs/reliability.md):
- a TensorProto of a few bytes could declare gigabytes (TF's fill rule) or a shape whose size
  overflows int64; an unknown dtype number crashed the error message itself;
- REST: JSON nested deeper than Python's recursion limit, and bodies of any size;
- the gateway: a pinned version beyond int64, or a Unicode digit in X-Model-Version.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import TestClient as StarletteTestClient
from tensorflow.core.framework import tensor_pb2, types_pb2

from common.tensors import TensorError, to_numpy
from gateway.main import create_app
from gateway.settings import Settings
from serving.metrics import ServerMetrics
from serving.model_manager import ModelManager
from serving.rest_api import create_rest_app
from tests.gateway import images

MESSAGE_LIMIT = 64 * 1024 * 1024


def proto(dtype: int, shape: tuple[int, ...], **values: object) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def test_a_tensor_may_not_declare_more_than_a_message_could_carry() -> None:
    few_bytes = proto(types_pb2.DT_UINT8, (3000, 224, 224, 3), int_val=[7])  # 450 MB once filled
    with pytest.raises(TensorError, match="would take 451,584,000 bytes"):
        to_numpy(few_bytes, MESSAGE_LIMIT)
    assert to_numpy(proto(types_pb2.DT_UINT8, (2, 2), int_val=[7]), MESSAGE_LIMIT).sum() == 28


def test_shapes_whose_size_overflows_are_refused() -> None:
    for shape in [(2**62, 2**62), (2**40, 224, 224, 3), (0, 2**31, 2**31)]:  # the last found by `make fuzz`
        with pytest.raises(TensorError):
            to_numpy(proto(types_pb2.DT_UINT8, shape), MESSAGE_LIMIT)


def test_an_unknown_dtype_number_is_an_invalid_argument() -> None:
    with pytest.raises(TensorError, match="DataType 999"):
        to_numpy(proto(999, (1,)))


def rest_client(max_body_bytes: int | None = None) -> StarletteTestClient:
    metrics = ServerMetrics()
    manager = ModelManager(metrics=metrics)  # no models: parsing comes first
    return StarletteTestClient(create_rest_app(manager, metrics, None, max_body_bytes))


def test_rest_refuses_json_nested_too_deep() -> None:
    body = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = rest_client().post("/v1/models/m:predict", content=body)
    assert response.status_code == 400 and "JSON Parse error" in response.json()["error"]


def test_rest_refuses_a_body_over_the_limit() -> None:
    client = rest_client(max_body_bytes=10_000)
    response = client.post("/v1/models/m:predict", content=b'{"instances": [' + b"0," * 10_000 + b"0]}")
    assert response.status_code == 400 and "over the limit of 10,000 bytes" in response.json()["error"]
    small = client.post("/v1/models/m:predict", content=b'{"instances": [0]}')
    assert small.status_code == 404  # parsed, then: no such model


def test_gateway_refuses_version_pins_beyond_int64() -> None:
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as client:
        upload = {"file": ("x.png", images.solid(10), "image/png")}
        for params, headers in [
            ({"version": str(2**63)}, {}),
            ({}, {"X-Model-Version": "99999999999999999999"}),
            ({}, {"X-Model-Version": b"\xb2"}),  # Latin-1 "²": str.isdigit() says yes, int() says no
        ]:
            response = client.post("/predict", files=upload, params=params, headers=headers)
            assert response.status_code == 422, (params, headers, response.text)
            assert response.json()["success"] is False
