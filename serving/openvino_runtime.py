"""The OpenVINO runtime: the same SavedModel as TF Serving runs, executed by OpenVINO on Intel CPUs.

- `serving_default` (uint8 images) is converted from the SavedModel's own signature function with
  `openvino.convert_model` and compiled for the CPU at one precision: `f32`, `bf16` (AMX /
  AVX512-BF16, OpenVINO's default on such CPUs) or `int8` (NNCF post-training quantization,
  calibrated on real images; everything not quantized runs in f32).
- `predict_image_bytes` has a string input, which OpenVINO cannot run. That one signature falls
  back to TensorFlow: the SavedModel's own function, so decoding is exactly the exported graph's
  (JPEG accurate DCT, centre crop, antialiased resize) with no second implementation to drift.
  Its network part runs in TensorFlow fp32, so bytes requests get TF's speed and TF's numbers.
- Thread safety: each compiled model owns a pool of infer requests; a `run()` call borrows one
  (or several, to split a batch across OpenVINO streams) and returns them, so concurrent calls
  from the server's batch or request threads never share a request.

Which precision is the CPU default, and why: docs/runtime-comparison.md.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from common import signatures
from common.preprocessing import IMAGE_SIZE
from serving.errors import FailedPreconditionError, InternalError, InvalidArgumentError
from serving.runtime import SignatureSpec, read_signatures

Precision = Literal["f32", "bf16", "int8"]
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PERFORMANCE_HINTS: tuple[str, ...] = get_args(PerformanceHint)
DEVICE = "CPU"

logger = logging.getLogger(__name__)


class OpenVINORuntime:
    """Runs one SavedModel version: `serving_default` in OpenVINO, `predict_image_bytes` in TensorFlow.

    `precision`: "f32" (the default: the only one within the tolerance of
    docs/runtime-comparison.md on the trained model), "bf16" (needs a CPU with BF16 support), or
    "int8" (needs `calibration_images`, uint8 canonical images [N, 256, 256, 3], a few hundred
    training images).
    `performance_hint`: "THROUGHPUT" (one OpenVINO stream per core; one batch is split across the
    streams) or "LATENCY" (one stream using every core).
    `infer_requests`: size of the request pool; default OpenVINO's optimal number for the hint.
    """

    def __init__(
        self,
        version_path: Path,
        precision: Precision = "f32",
        performance_hint: PerformanceHint = "THROUGHPUT",
        infer_requests: int | None = None,
        calibration_images: np.ndarray | None = None,
    ) -> None:
        import openvino as ov
        import tensorflow as tf

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if performance_hint not in PERFORMANCE_HINTS:
            raise ValueError(f"performance_hint must be one of {PERFORMANCE_HINTS}, got {performance_hint!r}")
        if precision == "int8" and calibration_images is None:
            raise ValueError(
                f"precision int8 needs calibration_images (uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3])"
            )
        self.version_path = Path(version_path)
        self.precision = precision
        self.performance_hint = performance_hint
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"):
            raise ValueError("this CPU has no BF16 support; use precision 'f32' or 'int8'")

        # Signatures as saved_model.pb states them: the same specs every runtime reports.
        self._signatures = read_signatures(self.version_path)
        if signatures.SERVING_SIGNATURE not in self._signatures:
            raise ValueError(f"{self.version_path} has no {signatures.SERVING_SIGNATURE!r} signature")
        # One TensorFlow load serves twice: the signature function to convert, and the string
        # signatures' fallback. (Converting the folder itself fails on the Keras variables.)
        self._saved_model = tf.saved_model.load(str(self.version_path), tags=["serve"])

        model = ov.convert_model(self._saved_model.signatures[signatures.SERVING_SIGNATURE])
        if precision == "int8" and calibration_images is not None:  # None was refused above
            model = quantize(model, calibration_images)
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": performance_hint,
            # Pinned threads lose when other threads share the cores (gRPC, batch threads, other
            # containers): in an A/B on this shared machine pinning cost 10-40% of the throughput.
            "ENABLE_CPU_PINNING": False,
            # int8 keeps what NNCF did not quantize in f32, so the only error is quantization's.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if infer_requests is not None:
            properties["PERFORMANCE_HINT_NUM_REQUESTS"] = infer_requests
        self._compiled = core.compile_model(model, DEVICE, properties)
        self._output_names = {port.get_any_name(): port for port in self._compiled.outputs}
        expected = set(self._signatures[signatures.SERVING_SIGNATURE].outputs)
        if set(self._output_names) != expected:
            raise InternalError(f"OpenVINO outputs {sorted(self._output_names)} differ from the signature's")
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        pool_size = infer_requests or int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(max(pool_size, 1)):
            self._requests.put(self._compiled.create_infer_request())
        self.pool_size = max(pool_size, 1)
        self._closed = threading.Event()
        logger.info(
            "OpenVINO runtime for %s: precision %s, hint %s, %d streams, %d infer requests",
            self.version_path,
            precision,
            performance_hint,
            self.streams,
            self.pool_size,
        )

    def signatures(self) -> dict[str, SignatureSpec]:
        return dict(self._signatures)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed.is_set():
            raise InternalError("the OpenVINO runtime is closed")
        spec = self._signatures.get(signature_name)
        if spec is None:
            raise FailedPreconditionError(f'Serving signature key "{signature_name}" not found.')
        if set(inputs) != set(spec.inputs):
            raise InvalidArgumentError(
                f"signature {signature_name!r} takes inputs {sorted(spec.inputs)}, got {sorted(inputs)}"
            )
        if signature_name == signatures.SERVING_SIGNATURE:
            return self._run_openvino(inputs[signatures.IMAGE_INPUT])
        return self._run_tensorflow(signature_name, inputs)

    def close(self) -> None:
        self._closed.set()
        self._requests = queue.SimpleQueue()
        self._compiled = None
        self._saved_model = None

    # --- serving_default in OpenVINO --------------------------------------------------------------

    def _run_openvino(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise InvalidArgumentError(
                f"input {signatures.IMAGE_INPUT!r} must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], "
                f"got {images.dtype} {list(images.shape)}"
            )
        if len(images) == 0:
            return {
                name: np.zeros((0,), dtype=_output_dtype(port)) for name, port in self._output_names.items()
            }
        # Borrow one request (waiting if all are busy), then any idle ones without waiting: a
        # batch is split across as many streams as are free, and concurrent calls never deadlock.
        borrowed = [self._requests.get()]
        while len(borrowed) < min(self.streams, len(images)):
            try:
                borrowed.append(self._requests.get_nowait())
            except queue.Empty:
                break
        try:
            chunks = np.array_split(images, len(borrowed))
            for request, chunk in zip(borrowed, chunks, strict=True):
                request.start_async({0: np.ascontiguousarray(chunk)})
            results: list[dict[str, np.ndarray]] = []
            for request in borrowed:
                request.wait()
                results.append(
                    {
                        name: np.array(request.get_tensor(port).data)
                        for name, port in self._output_names.items()
                    }
                )
        finally:
            for request in borrowed:
                self._requests.put(request)
        return {name: np.concatenate([result[name] for result in results]) for name in self._output_names}

    # --- string signatures in TensorFlow ----------------------------------------------------------

    def _run_tensorflow(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        function = self._saved_model.signatures[signature_name]
        try:
            outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:  # e.g. bytes that are not an image
            raise InvalidArgumentError(error.message) from error
        except tf.errors.OpError as error:
            raise InternalError(error.message) from error
        return {name: tensor.numpy() for name, tensor in outputs.items()}


def quantize(model: Any, calibration_images: np.ndarray) -> Any:
    """NNCF post-training int8 quantization of an OpenVINO model, calibrated on real uint8 images.

    One image per calibration item: NNCF's statistics assume batch 1. The head's fully connected
    layers (MatMul) stay in float: they form the decision from the pooled features at a
    negligible share of the compute, and quantizing them moves the logit most.
    """
    import nncf

    images = np.asarray(calibration_images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"calibration_images must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], "
            f"got {images.dtype} {images.shape}"
        )
    items = [images[index : index + 1] for index in range(len(images))]
    return nncf.quantize(
        model,
        nncf.Dataset(items),
        subset_size=len(items),
        ignored_scope=nncf.IgnoredScope(types=["MatMul"]),
    )


def _output_dtype(port: Any) -> np.dtype:
    return np.dtype(port.get_element_type().to_dtype())


def main(argv: Sequence[str] | None = None) -> None:
    """Predict image files with the OpenVINO runtime (a smoke test of a version folder)."""
    from common.preprocessing import decode_and_resize

    parser = argparse.ArgumentParser(prog="python -m serving.openvino_runtime", description=main.__doc__)
    parser.add_argument(
        "version_path", type=Path, help="a SavedModel version folder, e.g. models/ai_detector/1"
    )
    parser.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--performance-hint", choices=PERFORMANCE_HINTS, default="THROUGHPUT")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = OpenVINORuntime(
        arguments.version_path, precision=arguments.precision, performance_hint=arguments.performance_hint
    )
    try:
        batch = np.stack([decode_and_resize(path.read_bytes()) for path in arguments.images])
        outputs = runtime.run(signatures.SERVING_SIGNATURE, {signatures.IMAGE_INPUT: batch})
        for index, path in enumerate(arguments.images):
            probability = outputs[signatures.OUTPUT_PROBABILITY][index]
            label = outputs[signatures.OUTPUT_LABEL][index]
            print(f"{path}\tprobability={probability:.4f}\tlabel={label}")
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
