"""What executes a SavedModel's signatures: one protocol and TensorFlow, as in TF Serving.

The model manager only talks to :class:`Runtime`; :func:`load_runtime` builds the TensorFlow one
(tests give the manager a factory of their own). A runtime raises
:class:`serving.errors.InvalidArgumentError` for bad input in :meth:`Runtime.run`. (An OpenVINO
runtime was measured and retired: TF Serving, the production engine, cannot use it;
docs/runtime-comparison.md keeps its numbers.)

Signatures are read straight from `saved_model.pb` (:func:`read_signature_defs`), without
TensorFlow, so every runtime reports the same names, dtypes and shapes, and GetModelMetadata
returns the SignatureDefs exactly as TF Serving does.

This module also converts between TensorFlow's `TensorProto` and numpy with the proto fields
only (tensor_content or the typed repeated fields, as `tf.make_ndarray` reads them), so the
request path never calls into TensorFlow.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import DataLossError, InternalError, InvalidArgumentError, NotFoundError

logger = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
# The init-op pseudo signature TF2 writes into every SavedModel: listed in metadata, never run.
INIT_OP_SIGNATURE = "__saved_model_init_op"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"

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
        raise InvalidArgumentError(
            f"dtype {dtype_name(tf_dtype)} is not supported by the local model server"
        ) from None


def tf_dtype_of(array: np.ndarray) -> int:
    dtype = np.dtype(object) if array.dtype.kind in "SU" else array.dtype
    try:
        return _TF_DTYPE_BY_NUMPY[dtype]
    except KeyError:
        raise InternalError(f"numpy dtype {array.dtype} has no TensorFlow equivalent here") from None


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: TF dtype enum (`types_pb2.DT_UINT8`) and shape
    (-1 for an unknown size, None for an unknown rank)."""

    dtype: int
    shape: tuple[int, ...] | None
    tensor_name: str = ""

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return numpy_dtype(self.dtype)

    def describe_shape(self) -> str:
        return "<unknown rank>" if self.shape is None else f"[{','.join(str(size) for size in self.shape)}]"


@dataclass(frozen=True)
class SignatureSpec:
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


class Runtime(Protocol):
    """A loaded model version. Must be safe to call `run` from several threads at once."""

    def signatures(self) -> dict[str, SignatureSpec]: ...

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- reading the SavedModel


def read_signature_defs(version_path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The serving MetaGraph's SignatureDefs from `saved_model.pb` (no TensorFlow runtime needed)."""
    saved_model_file = Path(version_path) / SAVED_MODEL_FILE
    if not saved_model_file.is_file():
        raise NotFoundError(
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {version_path}"
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(saved_model_file.read_bytes())
    except Exception as error:  # protobuf raises DecodeError, or others, on junk
        raise DataLossError(f"Can't parse {saved_model_file} as binary proto ({error})") from error
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise NotFoundError(f"SavedModel at {version_path} has no MetaGraph tagged 'serve'")


def _shape_of(tensor_shape: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    if tensor_shape.unknown_rank:
        return None
    return tuple(int(dim.size) for dim in tensor_shape.dim)


def signature_specs(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, SignatureSpec]:
    """Runnable signatures (the init-op pseudo signature left out) as plain specs."""
    specs: dict[str, SignatureSpec] = {}
    for name, signature_def in signature_defs.items():
        if name == INIT_OP_SIGNATURE:
            continue
        specs[name] = SignatureSpec(
            method_name=signature_def.method_name,
            inputs={
                alias: TensorSpec(info.dtype, _shape_of(info.tensor_shape), info.name)
                for alias, info in signature_def.inputs.items()
            },
            outputs={
                alias: TensorSpec(info.dtype, _shape_of(info.tensor_shape), info.name)
                for alias, info in signature_def.outputs.items()
            },
        )
    return specs


def read_signatures(version_path: Path) -> dict[str, SignatureSpec]:
    return signature_specs(read_signature_defs(version_path))


# ---------------------------------------------------------------- TensorProto <-> numpy


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto, max_bytes: int | None = None) -> np.ndarray:
    """Decode like tf.make_ndarray: tensor_content, else the typed field (one value fills the
    tensor; fewer values are padded with the last, as TF does).

    `max_bytes` bounds the decoded size: the fill rule lets a request of a few bytes declare a
    shape of gigabytes, so requests are held to what a message could carry in full."""
    dtype = numpy_dtype(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgumentError("tensor has unknown rank")
    shape = tuple(int(dim.size) for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise InvalidArgumentError(f"tensor shape {list(shape)} has a negative dimension")
    element_count = math.prod(shape)  # Python ints: np.prod would wrap around on huge shapes
    # Zero dimensions count as 1 here: numpy refuses [0, 2**31, 2**31] as too big all the same.
    declared_bytes = math.prod(max(size, 1) for size in shape) * dtype.itemsize
    if max_bytes is not None and declared_bytes > max_bytes:
        raise InvalidArgumentError(
            f"tensor of shape {list(shape)} would take {declared_bytes:,} bytes; the limit is {max_bytes:,}"
        )
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        if len(proto.tensor_content) != element_count * dtype.itemsize:
            raise InvalidArgumentError(
                f"tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs {element_count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
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
        raise InvalidArgumentError(
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


def ndarray_to_tensor_proto(array: np.ndarray, *, as_tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """Encode like TF Serving's responses: typed repeated fields by default (Tensor::AsProtoField),
    or tensor_content with --enable_serialization_as_tensor_content."""
    proto = tensor_pb2.TensorProto(dtype=tf_dtype_of(array))
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend(
            value if isinstance(value, bytes) else str(value).encode() for value in array.flat
        )
    elif as_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    elif proto.dtype == types_pb2.DT_HALF:
        proto.half_val.extend(np.ascontiguousarray(array).view(np.uint16).ravel().tolist())
    else:
        getattr(proto, _VALUE_FIELD_BY_TF_DTYPE[proto.dtype]).extend(array.ravel().tolist())
    return proto


# ---------------------------------------------------------------- TensorFlow runtime


_tensorflow_threads_configured = threading.Lock()


def configure_tensorflow_threads(intra_op_threads: int, inter_op_threads: int) -> None:
    """Set TF's process-wide thread pools once, before any model loads (0 = TensorFlow's choice)."""
    import tensorflow as tf  # only servers that run TensorFlow pay for it

    if not _tensorflow_threads_configured.acquire(blocking=False):
        return
    if intra_op_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)


class TensorFlowRuntime:
    """The reference runtime: tf.saved_model.load and the concrete signature functions.

    TF Serving runs the same graph through a TF1 Session; outputs agree to float precision
    (see ../shared/perf/resnet50-cpu-runtimes.md: tf_sm_fp32 vs tf_sess_fp32). Calls release the
    GIL while TensorFlow computes, so concurrent requests and batch threads overlap.
    """

    kind = "tensorflow"

    def __init__(self, version_path: Path) -> None:
        import tensorflow as tf  # paid on the first load, not at import

        self._tf = tf
        self._signatures = read_signatures(version_path)
        self._loaded = tf.saved_model.load(str(version_path), tags=["serve"])
        self._functions = {name: self._loaded.signatures[name] for name in self._signatures}

    def signatures(self) -> dict[str, SignatureSpec]:
        return dict(self._signatures)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        function = self._functions[signature_name]
        tensors = {name: tf.constant(value) for name, value in inputs.items()}
        try:
            outputs = function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            raise InvalidArgumentError(error.message) from error
        except tf.errors.OpError as error:
            raise InternalError(error.message) from error
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def close(self) -> None:
        # Dropping the references frees the variables; TF keeps no other per-model state here.
        self._functions = {}
        del self._loaded


# ---------------------------------------------------------------- loading

RuntimeFactory = Callable[[Path], Runtime]
RUNTIME_LABEL = "tensorflow"  # TF Serving's `runtime` label of its latency metrics for SavedModels


def load_runtime(version_path: Path) -> Runtime:
    """TensorFlow runs every version, as in TF Serving (the model manager takes another factory
    only in tests)."""
    return TensorFlowRuntime(Path(version_path))
