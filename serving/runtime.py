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
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

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
    """TF Serving's code path: the SavedModel's `serve` MetaGraph loaded into a TF1 Session, each
    signature run by tensor name as a Session callable.

    As in TF Serving, inputs reach the graph as they came: no shape check against the signature
    (TF Serving's own tests feed `x` shaped [1] to half_plus_two's [-1,1]), so a shape the graph
    cannot run fails in it, as INVALID_ARGUMENT. TF1 graphs that TensorFlow 2's object loader
    cannot wrap as functions (reference variables, as in TF Serving's `saved_model_counter`) run
    too, with their state kept in the session between calls. Outputs agree with
    tf.saved_model.load to float precision at the same speed (../shared/perf/resnet50-cpu-runtimes.md:
    tf_sess_fp32 vs tf_sm_fp32). Session calls release the GIL, so concurrent requests overlap.
    """

    kind = "tensorflow"

    def __init__(self, version_path: Path, session_config: config_pb2.ConfigProto | None = None) -> None:
        import tensorflow as tf  # paid on the first load, not at import

        self._tf = tf
        self._signatures = read_signatures(version_path)
        self._graph = tf.Graph()
        # Without --tensorflow_session_config_file, the process-wide thread settings
        # (configure_tensorflow_threads); with it, that ConfigProto, its unset thread counts filled in.
        if session_config is not None:
            session_config = with_process_threads(session_config)
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        with self._graph.as_default():
            tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(version_path))
        self._callables: dict[tuple[str, tuple[str, ...]], tuple[list[str], Callable[..., Any]]] = {}
        self._callables_lock = threading.Lock()

    def signatures(self) -> dict[str, SignatureSpec]:
        return dict(self._signatures)

    def _callable(
        self, signature_name: str, input_names: tuple[str, ...]
    ) -> tuple[list[str], Callable[..., Any]]:
        """(output aliases, a Session callable fed `input_names`), made once per signature and inputs."""
        key = (signature_name, input_names)
        with self._callables_lock:
            if key not in self._callables:
                spec = self._signatures[signature_name]
                output_names = sorted(spec.outputs)
                options = config_pb2.CallableOptions(
                    feed=[spec.inputs[name].tensor_name for name in input_names],
                    fetch=[spec.outputs[name].tensor_name for name in output_names],
                )
                # The C++ callable, as TF Serving calls Session::Run: Session.make_callable's Python
                # wrapper would refuse feeds whose shape differs from the placeholder's.
                self._callables[key] = (output_names, self._session._make_callable_from_options(options))
            return self._callables[key]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        input_names = tuple(sorted(inputs))
        try:
            output_names, call = self._callable(signature_name, input_names)
            values = call(*(inputs[name] for name in input_names))
        except tf.errors.InvalidArgumentError as error:
            raise InvalidArgumentError(error.message) from error
        except tf.errors.OpError as error:
            raise InternalError(error.message) from error
        except (TypeError, ValueError) as error:  # a feed numpy cannot convert to the tensor's dtype
            raise InvalidArgumentError(str(error)) from error
        return {name: np.asarray(value) for name, value in zip(output_names, values, strict=True)}

    def close(self) -> None:
        self._callables = {}
        self._session.close()


# ---------------------------------------------------------------- loading

RuntimeFactory = Callable[[Path], Runtime]
RUNTIME_LABEL = "TF1"  # TF Serving's `runtime` label of its latency metrics for SavedModels (Session runs)


def load_runtime(version_path: Path, session_config: config_pb2.ConfigProto | None = None) -> Runtime:
    """TensorFlow runs every version, as in TF Serving (the model manager takes another factory
    only in tests)."""
    return TensorFlowRuntime(Path(version_path), session_config)


def read_session_config(path: Path) -> config_pb2.ConfigProto:
    """--tensorflow_session_config_file: a ConfigProto in text format, as TF Serving reads it."""
    from google.protobuf import text_format

    config = config_pb2.ConfigProto()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except (OSError, text_format.ParseError) as error:
        raise InvalidArgumentError(f"Error parsing TensorFlow session config file {path}: {error}") from error
    return config


def with_process_threads(session_config: config_pb2.ConfigProto) -> config_pb2.ConfigProto:
    """A copy of `session_config` whose unset (0) thread counts are the process's own settings."""
    import tensorflow as tf

    config = config_pb2.ConfigProto()
    config.CopyFrom(session_config)
    if not config.intra_op_parallelism_threads:
        config.intra_op_parallelism_threads = tf.config.threading.get_intra_op_parallelism_threads()
    if not config.inter_op_parallelism_threads:
        config.inter_op_parallelism_threads = tf.config.threading.get_inter_op_parallelism_threads()
    return config
