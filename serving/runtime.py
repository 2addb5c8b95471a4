"""What executes a SavedModel's signatures: one protocol and TensorFlow, as in TF Serving.

The model manager only talks to :class:`Runtime`; :func:`load_runtime` builds the TensorFlow one
(tests give the manager a factory of their own). A runtime raises
:class:`serving.errors.InvalidArgumentError` for bad input in :meth:`Runtime.run`. (An OpenVINO
runtime was measured and retired: TF Serving, the production engine, cannot use it;
docs/runtime-comparison.md keeps its numbers.)

Signatures are read straight from `saved_model.pb` (:func:`read_signature_defs`), without
TensorFlow, so every runtime reports the same names, dtypes and shapes, and GetModelMetadata
returns the SignatureDefs exactly as TF Serving does.

Tensors travel through :mod:`common.tensors`, the project's one TensorProto <-> numpy codec.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from common import tensors
from common.tensors import dtype_name
from serving.errors import DataLossError, InternalError, InvalidArgumentError, NotFoundError

logger = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
# The init-op pseudo signature TF2 writes into every SavedModel: listed in metadata, never run.
INIT_OP_SIGNATURE = "__saved_model_init_op"


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
        try:
            return tensors.numpy_dtype(self.dtype)
        except tensors.TensorError as error:
            raise InvalidArgumentError(str(error)) from None

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
