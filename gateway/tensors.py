"""numpy arrays <-> TensorProto without calling TensorFlow (only its protos).

`tf.make_tensor_proto` would work too, but it goes through TensorFlow's Python runtime on every
request; the wire format of the few dtypes the contract uses is simple enough to write directly.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# dtype enum -> (numpy dtype, the TensorProto field holding values when tensor_content is empty)
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
}
_DTYPE_ENUMS = {numpy_dtype: enum for enum, (numpy_dtype, _) in _DTYPES.items()}


class TensorConversionError(ValueError):
    """A tensor of a dtype or layout this module does not handle."""


def dtype_name(dtype_enum: int) -> str:
    return str(types_pb2.DataType.Name(dtype_enum))


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A dense numpy array as a TensorProto (raw little-endian bytes in tensor_content)."""
    dtype_enum = _DTYPE_ENUMS.get(array.dtype)
    if dtype_enum is None:
        raise TensorConversionError(f"no TensorProto conversion for numpy dtype {array.dtype}")
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
    )
    return tensor_pb2.TensorProto(
        dtype=dtype_enum,
        tensor_shape=shape,
        tensor_content=np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(),
    )


def to_numpy(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array, from tensor_content or from the typed value field."""
    if tensor.dtype not in _DTYPES:
        raise TensorConversionError(f"no numpy conversion for {dtype_name(tensor.dtype)}")
    numpy_dtype, value_field = _DTYPES[tensor.dtype]
    shape = tuple(dimension.size for dimension in tensor.tensor_shape.dim)
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=numpy_dtype.newbyteorder("<")).astype(numpy_dtype)
        return values.reshape(shape)
    values = np.asarray(getattr(tensor, value_field), dtype=numpy_dtype)
    element_count = int(np.prod(shape)) if shape else 1
    if values.size == element_count:
        return values.reshape(shape)
    if values.size == 1:
        # TensorProto allows one value standing for a tensor filled with it.
        return np.full(shape, values[0], dtype=numpy_dtype)
    if values.size == 0 and element_count == 0:
        return values.reshape(shape)
    raise TensorConversionError(f"tensor of shape {shape} carries {values.size} values")
