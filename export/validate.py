"""The validation gate: an export is only renamed into a version folder if this passes.

The SavedModel is loaded in a *fresh Python process* (`python -m export.validate inspect ...`)
with tf.saved_model.load, so nothing of the exporting process (Keras objects, traced functions,
registered custom layers) can make a broken SavedModel look fine. That process runs every
signature on real images and every warmup record, and reports the signature names, dtypes and
shapes; this side compares the outputs with the Keras model.

    python -m export.validate check models/ai_detector/3 --run runs/efficientnet_lite0
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from common import signatures
from common.model_card import read_model_card
from common.repository import REPO_ROOT
from export.errors import ValidationFailedError
from export.reference import ReferenceSet

FRESH_PROCESS_TIMEOUT_SECONDS = 1800
# The bytes signature decodes in the graph: a worst mean of 2.1 grey levels per pixel away from
# the shared preprocessing on ../shared/data/uploads (tests/export/test_bytes_parity.py; the JPEG
# quality-90 step turns the two Lanczos filters' sub-level differences into block-wise ones).
# What that does to the probability: at most 0.041 / 0.047 for versions 3 / 4 on the uploads,
# 0.024 for the tests' small model (docs/export.md); the gate allows this much on top of the variant's own
# tolerance. Files that are not resized (the gate's validation files) decode identically.
DECODE_PROBABILITY_TOLERANCE = 0.05

app = typer.Typer(add_completion=False, help=__doc__)


# ---------------------------------------------------------------- the fresh process


def _pack_files(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0, *[len(content) for content in files]]).astype(np.int64)
    buffer = np.frombuffer(b"".join(files), dtype=np.uint8) if files else np.zeros(0, np.uint8)
    return buffer, offsets


def _unpack_files(buffer: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    raw = buffer.tobytes()
    return [raw[start:end] for start, end in itertools.pairwise(offsets)]


def _describe_spec(spec: Any) -> dict[str, Any]:
    shape = [-1 if dimension is None else int(dimension) for dimension in spec.shape.as_list()]
    return {"dtype": spec.dtype.name, "shape": shape}


def inspect_saved_model(saved_model_dir: Path, inputs_path: Path, outputs_path: Path) -> dict[str, Any]:
    """Load `saved_model_dir`, describe its signatures, run them and its warmup records."""
    import tensorflow as tf

    from export.measure import run_image_bytes, run_images
    from export.warmup import read_warmup

    started = time.monotonic()
    loaded = tf.saved_model.load(str(saved_model_dir))
    load_seconds = time.monotonic() - started
    found: dict[str, Any] = {}
    for name, function in loaded.signatures.items():
        _, keyword_inputs = function.structured_input_signature
        found[name] = {
            "inputs": {key: _describe_spec(spec) for key, spec in keyword_inputs.items()},
            "outputs": {
                key: _describe_spec(tf.TensorSpec(value.shape, value.dtype))
                for key, value in function.structured_outputs.items()
            },
        }
    inputs = np.load(inputs_path)
    outputs: dict[str, np.ndarray] = {}
    problems: list[str] = []
    if signatures.SERVING_SIGNATURE in loaded.signatures:
        for key, value in run_images(
            loaded.signatures[signatures.SERVING_SIGNATURE], inputs["images"]
        ).items():
            outputs[f"{signatures.SERVING_SIGNATURE}/{key}"] = value
    if signatures.BYTES_SIGNATURE in loaded.signatures:
        files = _unpack_files(inputs["files"], inputs["file_offsets"])
        for key, value in run_image_bytes(loaded.signatures[signatures.BYTES_SIGNATURE], files).items():
            outputs[f"{signatures.BYTES_SIGNATURE}/{key}"] = value
    np.savez(outputs_path, **outputs)  # type: ignore[arg-type]

    warmup: dict[str, Any] = {"records": 0, "by_signature": {}}
    warmup_path = Path(saved_model_dir) / signatures.WARMUP_FILE
    if not warmup_path.is_file():
        problems.append(f"no warmup file at {signatures.WARMUP_FILE}")
    else:
        for index, log in enumerate(read_warmup(warmup_path)):
            warmup["records"] += 1
            if log.WhichOneof("log_type") != "predict_log":  # type: ignore[attr-defined]
                problems.append(f"warmup record {index} is not a predict_log")
                continue
            request = log.predict_log.request  # type: ignore[attr-defined]
            name = request.model_spec.signature_name or signatures.SERVING_SIGNATURE
            if name not in loaded.signatures:
                problems.append(f"warmup record {index} asks for unknown signature {name!r}")
                continue
            feeds = {key: tf.constant(tf.make_ndarray(tensor)) for key, tensor in request.inputs.items()}
            batch = next(iter(feeds.values())).shape[0]
            try:
                result = loaded.signatures[name](**feeds)
            except (tf.errors.OpError, TypeError, ValueError) as error:
                problems.append(f"warmup record {index} ({name}, batch {batch}) failed: {error}")
                continue
            if result[signatures.OUTPUT_PROBABILITY].shape[0] != batch:
                problems.append(f"warmup record {index} ({name}) answered the wrong batch size")
            warmup["by_signature"].setdefault(name, []).append(int(batch))
    return {
        "signatures": found,
        "warmup": warmup,
        "problems": problems,
        "load_seconds": round(load_seconds, 2),
    }


@app.command("inspect", hidden=True)
def inspect_command(saved_model_dir: Path, inputs_path: Path, outputs_path: Path, report_path: Path) -> None:
    """Internal: the fresh-process half of the gate."""
    report = inspect_saved_model(saved_model_dir, inputs_path, outputs_path)
    report_path.write_text(json.dumps(report, indent=2) + "\n")


# ---------------------------------------------------------------- the comparing side


def contract_problems(found: dict[str, Any]) -> list[str]:
    from export.graph import SIGNATURE_CONTRACT

    problems = []
    for name, (expected_inputs, expected_outputs) in SIGNATURE_CONTRACT.items():
        if name not in found:
            problems.append(f"signature {name!r} is missing (found {sorted(found)})")
            continue
        for kind, expected in (("inputs", expected_inputs), ("outputs", expected_outputs)):
            actual = found[name][kind]
            if sorted(actual) != sorted(expected):
                problems.append(f"{name} {kind} are {sorted(actual)}, expected {sorted(expected)}")
                continue
            for tensor_name, contract in expected.items():
                if actual[tensor_name] != contract.describe():
                    problems.append(
                        f"{name} {kind} {tensor_name}: {actual[tensor_name]} != {contract.describe()}"
                    )
    return problems


def _consistency_problems(name: str, outputs: dict[str, np.ndarray], threshold: float) -> list[str]:
    problems = []
    probability = outputs[f"{name}/{signatures.OUTPUT_PROBABILITY}"]
    served_threshold = outputs[f"{name}/{signatures.OUTPUT_THRESHOLD}"]
    label = outputs[f"{name}/{signatures.OUTPUT_LABEL}"]
    if not np.all(served_threshold == np.float32(threshold)):
        problems.append(f"{name} answers threshold {np.unique(served_threshold)}, the run's is {threshold}")
    if not np.array_equal(label, (probability >= served_threshold).astype(label.dtype)):
        problems.append(f"{name} label is not probability >= threshold")
    if not np.all(np.isfinite(probability)):
        problems.append(f"{name} answers non-finite probabilities")
    return problems


def run_gate(
    saved_model_dir: Path,
    reference: ReferenceSet,
    temperature: float,
    threshold: float,
    tolerance: Any = None,
) -> dict[str, Any]:
    """Inspect `saved_model_dir` in a fresh process and compare it with the Keras reference.

    Returns the report; `report["problems"]` is empty when the export passes.
    """
    from export.measure import agreement
    from export.optimize import Tolerance

    tolerance = tolerance or Tolerance()
    if reference.image_logits is None or reference.file_logits is None:
        raise ValueError(
            "the reference set has no Keras logits; call export.reference.with_keras_logits first"
        )
    saved_model_dir = Path(saved_model_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="aidetect-gate-") as scratch:
        inputs_path, outputs_path = Path(scratch) / "inputs.npz", Path(scratch) / "outputs.npz"
        report_path = Path(scratch) / "report.json"
        buffer, offsets = _pack_files([file.content for file in reference.files])
        np.savez(inputs_path, images=reference.images, files=buffer, file_offsets=offsets)
        started = time.monotonic()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "export.validate",
                "inspect",
                str(saved_model_dir),
                str(inputs_path),
                str(outputs_path),
                str(report_path),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=FRESH_PROCESS_TIMEOUT_SECONDS,
            check=False,
        )
        seconds = time.monotonic() - started
        if completed.returncode != 0 or not report_path.is_file():
            tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
            return {"problems": [f"loading or running the SavedModel in a fresh process failed:\n{tail}"]}
        inspected = json.loads(report_path.read_text())
        with np.load(outputs_path) as loaded_outputs:
            outputs = {key: loaded_outputs[key] for key in loaded_outputs.files}

    problems = list(inspected["problems"]) + contract_problems(inspected["signatures"])
    report: dict[str, Any] = {
        "fresh_process_seconds": round(seconds, 1),
        "load_seconds": inspected["load_seconds"],
        "signatures": inspected["signatures"],
        "warmup": inspected["warmup"],
        "tolerance": tolerance.to_dict() | {"bytes_extra_probability": DECODE_PROBABILITY_TOLERANCE},
    }
    for name in (signatures.SERVING_SIGNATURE, signatures.BYTES_SIGNATURE):
        if name not in inspected["warmup"]["by_signature"]:
            problems.append(f"the warmup file has no record for {name}")
    if f"{signatures.SERVING_SIGNATURE}/{signatures.OUTPUT_PROBABILITY}" in outputs:
        name = signatures.SERVING_SIGNATURE
        measured = agreement(
            outputs[f"{name}/{signatures.OUTPUT_PROBABILITY}"],
            reference.probabilities(reference.image_logits, temperature),
            threshold,
            outputs[f"{name}/{signatures.OUTPUT_LOGIT}"],
            reference.image_logits,
        )
        report[name] = measured
        problems += [f"{name}: {problem}" for problem in tolerance.problems(measured)]
        problems += _consistency_problems(name, outputs, threshold)
    if f"{signatures.BYTES_SIGNATURE}/{signatures.OUTPUT_PROBABILITY}" in outputs:
        name = signatures.BYTES_SIGNATURE
        measured = agreement(
            outputs[f"{name}/{signatures.OUTPUT_PROBABILITY}"],
            reference.probabilities(reference.file_logits, temperature),
            threshold,
            outputs[f"{name}/{signatures.OUTPUT_LOGIT}"],
            reference.file_logits,
        )
        measured["formats"] = sorted({file.image_format for file in reference.files})
        report[name] = measured
        allowed = tolerance.max_abs_probability_difference + DECODE_PROBABILITY_TOLERANCE
        if measured["max_abs_probability_difference"] > allowed:
            problems.append(
                f"{name}: max |probability - Keras on the shared preprocessing| = "
                f"{measured['max_abs_probability_difference']:.4g} > {allowed:.4g}"
            )
        problems += _consistency_problems(name, outputs, threshold)
    report["problems"] = problems
    return report


def require_pass(report: dict[str, Any]) -> None:
    if report["problems"]:
        raise ValidationFailedError(report["problems"])


@app.command("check")
def check_command(
    version_dir: Annotated[
        Path, typer.Argument(help="An exported version folder, e.g. models/ai_detector/1")
    ],
    run: Annotated[Path, typer.Option(help="The training run it was exported from")],
    data: Annotated[
        Path | None, typer.Option(help="The run's data set (default: from its config.json)")
    ] = None,
) -> None:
    """Re-run the validation gate on an existing export and print the report."""
    from export.optimize import Tolerance
    from export.reference import build_reference_set, with_keras_logits
    from training.run_folder import TrainingRun

    training_run = TrainingRun.load(run)
    paths = training_run.split_files("val", data)
    reference = with_keras_logits(build_reference_set(paths), training_run.load_classifier())
    card = read_model_card(version_dir) or {}
    tolerance = Tolerance(**card.get("export", {}).get("tolerance", {})) if card else Tolerance()
    report = run_gate(version_dir, reference, training_run.temperature, training_run.threshold, tolerance)
    print(json.dumps({key: value for key, value in report.items() if key != "signatures"}, indent=2))
    if report["problems"]:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
