"""numpy arrays <-> TensorFlow's TensorProto, with the proto fields only: the one codec of the project.

The gateway, the export's warmup records and the load test build Predict requests with it
(:func:`predict_request`); the local model server decodes requests and encodes responses with
it. It reads tensors as `tf.make_ndarray` does (tensor_content, else the typed repeated field;
one value fills the tensor, fewer values are padded with the last) and writes them as TF
Serving does (typed repeated fields, as `Tensor::AsProtoField`, or tensor_content as clients
and `--enable_serialization_as_tensor_content` do), without calling into TensorFlow's Python
runtime on the request path.

Errors are :class:`TensorError` (a ValueError); each caller says what it means for its API
(the model server: INVALID_ARGUMENT for a request, INTERNAL for its own output).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from common.signatures import SERVING_SIGNATURE

# TF DataType -> numpy dtype. Strings are numpy object arrays of `bytes`.
_NUMPY_BY_TF_DTYPE: dict[int, np.dtype[Any]] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_STRING: np.dtype(object),
}
_TF_DTYPE_BY_NUMPY: dict[np.dtype[Any], int] = {value: key for key, value in _NUMPY_BY_TF_DTYPE.items()}

# Which repeated field of TensorProto carries each dtype (TF's Tensor::AsProtoField).
_VALUE_FIELD_BY_TF_DTYPE: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


class TensorError(ValueError):
    """A tensor this codec cannot convert: unsupported dtype, inconsistent shape and values, too big."""


def dtype_name(tf_dtype: int) -> str:
    """`DT_UINT8` for the enum value, as TF Serving prints dtypes (a number TF has no name for, as is:
    requests can carry any number in the enum field)."""
    if tf_dtype not in types_pb2.DataType.values():
        return f"DataType {tf_dtype}"
    name: str = types_pb2.DataType.Name(tf_dtype)
    return name


def numpy_dtype_name(dtype: np.dtype[Any]) -> str:
    """TF's name for a numpy dtype (`DT_FLOAT`), or numpy's own name when TF has none."""
    tf_dtype = _TF_DTYPE_BY_NUMPY.get(np.dtype(object) if dtype.kind in "SU" else dtype)
    return dtype_name(tf_dtype) if tf_dtype is not None else str(dtype)


def numpy_dtype(tf_dtype: int) -> np.dtype[Any]:
    try:
        return _NUMPY_BY_TF_DTYPE[tf_dtype]
    except KeyError:
        raise TensorError(
            f"dtype {dtype_name(tf_dtype)} is not supported by the local model server"
        ) from None


def tf_dtype_of(array: np.ndarray) -> int:
    dtype = np.dtype(object) if array.dtype.kind in "SU" else array.dtype
    try:
        return _TF_DTYPE_BY_NUMPY[dtype]
    except KeyError:
        raise TensorError(f"numpy dtype {array.dtype} has no TensorFlow equivalent here") from None


def to_numpy(proto: tensor_pb2.TensorProto, max_bytes: int | None = None) -> np.ndarray:
    """Decode like tf.make_ndarray: tensor_content, else the typed field (one value fills the
    tensor; fewer values are padded with the last, as TF does).

    `max_bytes` bounds the decoded size: the fill rule lets a request of a few bytes declare a
    shape of gigabytes, so requests are held to what a message could carry in full."""
    dtype = numpy_dtype(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        raise TensorError("tensor has unknown rank")
    shape = tuple(int(dim.size) for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorError(f"tensor shape {list(shape)} has a negative dimension")
    element_count = math.prod(shape)  # Python ints: np.prod would wrap around on huge shapes
    # Zero dimensions count as 1 here: numpy refuses [0, 2**31, 2**31] as too big all the same.
    declared_bytes = math.prod(max(size, 1) for size in shape) * dtype.itemsize
    if max_bytes is not None and declared_bytes > max_bytes:
        raise TensorError(
            f"tensor of shape {list(shape)} would take {declared_bytes:,} bytes; the limit is {max_bytes:,}"
        )
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        if len(proto.tensor_content) != element_count * dtype.itemsize:
            raise TensorError(
                f"tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs {element_count * dtype.itemsize}"
            )
        return (
            np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<"))
            .astype(dtype, copy=False)
            .reshape(shape)
        )
    field = _VALUE_FIELD_BY_TF_DTYPE[proto.dtype]
    values = getattr(proto, field)
    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif field == "int_val":
        # uint8/int8/int16/uint16 travel as int32 values; TF narrows them the same way.
        flat = np.asarray(values, dtype=np.int64).astype(dtype)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size == element_count:
        return flat.reshape(shape)
    if flat.size > element_count:
        raise TensorError(
            f"tensor has {flat.size} values in {field} but shape {list(shape)} holds {element_count}"
        )
    if flat.size == 0:
        return (
            np.zeros(shape, dtype=dtype) if dtype != np.dtype(object) else np.full(shape, b"", dtype=object)
        )
    padded = np.empty(element_count, dtype=dtype)
    padded[: flat.size] = flat
    padded[flat.size :] = flat[-1]
    return padded.reshape(shape)


def to_tensor_proto(array: np.ndarray, *, as_tensor_content: bool = True) -> tensor_pb2.TensorProto:
    """Encode an array: raw little-endian bytes in tensor_content (what clients send, and TF Serving
    with --enable_serialization_as_tensor_content), or with `as_tensor_content=False` the typed
    repeated fields TF Serving answers with by default (Tensor::AsProtoField). Strings always go
    in string_val."""
    proto = tensor_pb2.TensorProto(dtype=tf_dtype_of(array))
    proto.tensor_shape.SetInParent()  # present even for a scalar (`tensor_shape {}`), as TensorFlow writes it
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend(
            value if isinstance(value, bytes) else str(value).encode() for value in array.flat
        )
    elif as_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    elif proto.dtype == types_pb2.DT_HALF:
        proto.half_val.extend(np.ascontiguousarray(array).view(np.uint16).ravel().tolist())
    else:
        getattr(proto, _VALUE_FIELD_BY_TF_DTYPE[proto.dtype]).extend(array.ravel().tolist())
    return proto


def predict_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
    signature_name: str = SERVING_SIGNATURE,
    *,
    version: int | None = None,
    version_label: str | None = None,
    output_filter: Sequence[str] = (),
) -> predict_pb2.PredictRequest:
    """A TF Serving PredictRequest: arrays are encoded with :func:`to_tensor_proto` (tensor_content),
    TensorProtos are sent as they are (tests send malformed ones on purpose)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if version_label:
        request.model_spec.version_label = version_label
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto) else to_tensor_proto(value)
        )
    request.output_filter.extend(output_filter)
    return request
