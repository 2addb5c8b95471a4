"""Which runtime and precision should serve on this CPU: OpenVINO f32 / bf16 / int8 against TensorFlow.

    python -m serving.benchmark_runtimes models/ai_detector/1 --data ../shared/data/ai-vs-real

Two measurements on one exported SavedModel version, in one process, side by side:

1. Agreement with TensorFlow (the reference: what TF Serving runs) on every val and test image
   of the data set, decoded by common.preprocessing: largest and mean absolute difference of
   the calibrated probability and of the logit, and label agreement at the model's threshold.
   int8 is calibrated on training images only. A runtime may become the CPU default only
   within TOLERANCE.
2. Throughput: images per second at several batch sizes for one caller, and for several
   concurrent single-image callers (a server without batching). Runtimes take turns inside
   every round, so load from other processes on the shared CPU hits all of them alike; the
   CPU share other processes used during each measurement is recorded next to it.

Writes the report (default docs/runtime-comparison.md) and the numbers beside it (.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common import signatures
from common.preprocessing import decode_and_resize
from serving.runtime import Runtime

logger = logging.getLogger(__name__)

SEED = 42
EVALUATION_SPLITS = ("val", "test")
CALIBRATION_SPLIT = "train"


@dataclass(frozen=True)
class Tolerance:
    """How close a runtime must stay to TensorFlow on the val+test images to be a default.

    0.02 in probability is 2 points of the gateway's percentage, below what a user can act on;
    labels must all agree, because a flipped decision is what a user sees.
    """

    max_probability_difference: float = 0.02
    min_label_agreement: float = 1.0

    def accepts(self, result: AgreementResult) -> bool:
        return (
            result.max_abs_probability_difference <= self.max_probability_difference
            and result.label_agreement >= self.min_label_agreement
        )


TOLERANCE = Tolerance()


@dataclass(frozen=True)
class RuntimeVariant:
    """One runtime configuration to compare: `name` in the report, how to build it."""

    name: str
    description: str
    build: Callable[[], Runtime]


@dataclass
class AgreementResult:
    count: int
    max_abs_probability_difference: float
    mean_abs_probability_difference: float
    max_abs_logit_difference: float
    labels_agreeing: int
    label_agreement: float
    # For each flipped label: TensorFlow's probability (how close to the threshold it was).
    flipped_reference_probabilities: list[float]
    accuracy: float  # against the true labels, to see what a precision costs in quality


@dataclass
class ThroughputCell:
    """One (runtime, workload) measurement per round: wall-clock images/s, images per CPU-second
    of this process, and the CPU share other processes used meanwhile."""

    images_per_second: list[float] = field(default_factory=list)
    images_per_cpu_second: list[float] = field(default_factory=list)
    others_cpu_share: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_second)

    @property
    def median_per_cpu_second(self) -> float:
        return statistics.median(self.images_per_cpu_second)


def agreement(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], truth: np.ndarray
) -> AgreementResult:
    probability = outputs[signatures.OUTPUT_PROBABILITY].astype(np.float64)
    reference_probability = reference[signatures.OUTPUT_PROBABILITY].astype(np.float64)
    label, reference_label = outputs[signatures.OUTPUT_LABEL], reference[signatures.OUTPUT_LABEL]
    logit_difference = np.abs(
        outputs[signatures.OUTPUT_LOGIT].astype(np.float64)
        - reference[signatures.OUTPUT_LOGIT].astype(np.float64)
    )
    difference = np.abs(probability - reference_probability)
    agreeing = label == reference_label
    return AgreementResult(
        count=len(probability),
        max_abs_probability_difference=float(difference.max()),
        mean_abs_probability_difference=float(difference.mean()),
        max_abs_logit_difference=float(logit_difference.max()),
        labels_agreeing=int(agreeing.sum()),
        label_agreement=float(agreeing.mean()),
        flipped_reference_probabilities=[float(value) for value in reference_probability[~agreeing]],
        accuracy=float((label == truth).mean()),
    )


def run_all(runtime: Runtime, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The uint8 signature over `images` in batches, outputs concatenated."""
    parts = [
        runtime.run(
            signatures.SERVING_SIGNATURE, {signatures.IMAGE_INPUT: images[start : start + batch_size]}
        )
        for start in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


# --- data -----------------------------------------------------------------------------------------


def read_split_images(
    data_dir: Path, splits: Sequence[str], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 256, 256, 3] and 0/1 labels (1 = AI) of the manifest rows in `splits`.

    With `limit`, a seeded random sample of that many rows (for calibration).
    """
    with (data_dir / "manifest.csv").open(newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row["split"] in splits]
    if limit is not None and limit < len(rows):
        chosen = np.random.default_rng(SEED).choice(len(rows), size=limit, replace=False)
        rows = [rows[index] for index in sorted(chosen)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(lambda row: decode_and_resize((data_dir / row["path"]).read_bytes()), rows))
    labels = np.array([1 if row["label"] == "ai" else 0 for row in rows], dtype=np.int32)
    return np.stack(images), labels


# --- throughput -----------------------------------------------------------------------------------


class OthersCpuMeter:
    """CPU time this process and the other processes used while a block ran.

    `own_seconds`: this process's CPU time (every thread). `share`: other processes' CPU time as
    a share of all cores' wall time. Under heavy load wall-clock rates measure how much CPU a
    runtime's threads win from the scheduler; images per own CPU-second measure its efficiency.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()

    def __enter__(self) -> OthersCpuMeter:
        self._started = time.perf_counter()
        self._system = self._busy_seconds()
        self._ours = self._own_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._started
        self.own_seconds = self._own_seconds() - self._ours
        others = (self._busy_seconds() - self._system) - self.own_seconds
        self.share = max(0.0, others / (wall * (self._psutil.cpu_count() or 1)))

    def _busy_seconds(self) -> float:
        times = self._psutil.cpu_times()
        return float(times.user + times.system + getattr(times, "nice", 0.0))

    def _own_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)


def time_batches(
    runtime: Runtime, images: np.ndarray, batch_size: int, image_count: int
) -> tuple[int, float]:
    """(images sent, seconds) for one caller sending `image_count` images in batches of `batch_size`."""
    calls = max(2, image_count // batch_size)
    batches = [
        images[(call * batch_size) % (len(images) - batch_size) :][:batch_size] for call in range(calls)
    ]
    started = time.perf_counter()
    for batch in batches:
        runtime.run(signatures.SERVING_SIGNATURE, {signatures.IMAGE_INPUT: batch})
    return calls * batch_size, time.perf_counter() - started


def time_concurrent_callers(
    runtime: Runtime, images: np.ndarray, callers: int, image_count: int
) -> tuple[int, float]:
    """(images sent, seconds) for `callers` threads each sending single images (no server-side batching)."""
    per_caller = max(2, image_count // callers)
    barrier = threading.Barrier(callers + 1)

    def caller(offset: int) -> None:
        barrier.wait()
        for call in range(per_caller):
            index = (offset * per_caller + call) % len(images)
            runtime.run(signatures.SERVING_SIGNATURE, {signatures.IMAGE_INPUT: images[index : index + 1]})

    threads = [threading.Thread(target=caller, args=(offset,)) for offset in range(callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return callers * per_caller, time.perf_counter() - started


# --- the benchmark --------------------------------------------------------------------------------


def variants(version_path: Path, calibration_images: np.ndarray) -> list[RuntimeVariant]:
    from serving.openvino_runtime import OpenVINORuntime
    from serving.runtime import TensorFlowRuntime

    return [
        RuntimeVariant(
            "tensorflow",
            "TensorFlow fp32, tf.saved_model.load (the local server's reference runtime)",
            lambda: TensorFlowRuntime(version_path),
        ),
        RuntimeVariant(
            "openvino_f32",
            "OpenVINO f32, THROUGHPUT hint",
            lambda: OpenVINORuntime(version_path, precision="f32", performance_hint="THROUGHPUT"),
        ),
        RuntimeVariant(
            "openvino_f32_latency",
            "OpenVINO f32, LATENCY hint",
            lambda: OpenVINORuntime(version_path, precision="f32", performance_hint="LATENCY"),
        ),
        RuntimeVariant(
            "openvino_bf16",
            "OpenVINO bf16, THROUGHPUT hint",
            lambda: OpenVINORuntime(version_path, precision="bf16", performance_hint="THROUGHPUT"),
        ),
        RuntimeVariant(
            "openvino_int8",
            f"OpenVINO int8 (NNCF PTQ, {len(calibration_images)} train images), THROUGHPUT hint",
            lambda: OpenVINORuntime(
                version_path,
                precision="int8",
                performance_hint="THROUGHPUT",
                calibration_images=calibration_images,
            ),
        ),
    ]


def benchmark(
    version_path: Path,
    data_dir: Path,
    calibration_size: int,
    batch_sizes: Sequence[int],
    concurrent_callers: int,
    rounds: int,
    images_per_measurement: int,
) -> dict[str, Any]:
    evaluation_images, truth = read_split_images(data_dir, EVALUATION_SPLITS)
    calibration_images, _ = read_split_images(data_dir, (CALIBRATION_SPLIT,), limit=calibration_size)
    logger.info("%d val+test images, %d calibration images", len(evaluation_images), len(calibration_images))

    runtimes: dict[str, Runtime] = {}
    descriptions: dict[str, str] = {}
    load_seconds: dict[str, float] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for variant in variants(version_path, calibration_images):
        started = time.perf_counter()
        runtimes[variant.name] = variant.build()
        load_seconds[variant.name] = time.perf_counter() - started
        descriptions[variant.name] = variant.description
        outputs[variant.name] = run_all(runtimes[variant.name], evaluation_images)
        logger.info(
            "%s loaded in %.1f s and ran the val+test images", variant.name, load_seconds[variant.name]
        )

    reference = outputs["tensorflow"]
    agreements = {name: agreement(result, reference, truth) for name, result in outputs.items()}

    workloads = [f"batch {size}" for size in batch_sizes] + [f"{concurrent_callers} callers x 1"]
    cells = {name: {workload: ThroughputCell() for workload in workloads} for name in runtimes}
    for round_index in range(rounds):
        for workload_index, workload in enumerate(workloads):
            for name, runtime in runtimes.items():
                with OthersCpuMeter() as meter:
                    if workload_index < len(batch_sizes):
                        count, seconds = time_batches(
                            runtime, evaluation_images, batch_sizes[workload_index], images_per_measurement
                        )
                    else:
                        count, seconds = time_concurrent_callers(
                            runtime, evaluation_images, concurrent_callers, images_per_measurement
                        )
                cell = cells[name][workload]
                cell.images_per_second.append(count / seconds)
                cell.images_per_cpu_second.append(count / max(meter.own_seconds, 1e-9))
                cell.others_cpu_share.append(meter.share)
        logger.info("throughput round %d of %d done", round_index + 1, rounds)
    for runtime in runtimes.values():
        runtime.close()

    return {
        "version_path": str(version_path),
        "data": str(data_dir),
        "evaluation_images": len(evaluation_images),
        "calibration_images": len(calibration_images),
        "tolerance": asdict(TOLERANCE),
        "descriptions": descriptions,
        "load_seconds": load_seconds,
        "agreement": {name: asdict(result) for name, result in agreements.items()},
        "within_tolerance": {name: TOLERANCE.accepts(result) for name, result in agreements.items()},
        "throughput": {
            name: {
                workload: asdict(cell)
                | {"median": cell.median, "median_per_cpu_second": cell.median_per_cpu_second}
                for workload, cell in by_workload.items()
            }
            for name, by_workload in cells.items()
        },
        "workloads": workloads,
        "rounds": rounds,
        "images_per_measurement": images_per_measurement,
        "machine": machine_description(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def machine_description() -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    return {
        "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "cores": os.cpu_count(),
        "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "platform": platform.platform(),
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {package: version(package) for package in ("tensorflow", "openvino", "nncf", "numpy")}


# --- the report -----------------------------------------------------------------------------------


# A runtime must beat TensorFlow by this factor to replace it: the rounds on the shared CPU
# scatter by tens of percent, so a smaller lead is not a measured lead.
MINIMUM_SPEEDUP = 1.10


def choose_default(results: dict[str, Any], workload: str) -> str:
    """The most efficient runtime (images per CPU-second) at `workload` among those within
    tolerance, if it beats TensorFlow by MINIMUM_SPEEDUP; else TensorFlow, the reference."""

    def efficiency(name: str) -> float:
        rate: float = results["throughput"][name][workload]["median_per_cpu_second"]
        return rate

    candidates = [name for name, accepted in results["within_tolerance"].items() if accepted]
    best = max(candidates, key=efficiency)
    return best if efficiency(best) >= MINIMUM_SPEEDUP * efficiency("tensorflow") else "tensorflow"


def _throughput_table(results: dict[str, Any], metric: str, samples: str) -> list[str]:
    workloads: list[str] = results["workloads"]
    lines = [
        "| runtime | " + " | ".join(workloads) + " | others' CPU | load s |",
        "|---|" + "---|" * len(workloads) + "---|---|",
    ]
    for name, by_workload in results["throughput"].items():
        cells = []
        for workload in workloads:
            cell = by_workload[workload]
            low, high = min(cell[samples]), max(cell[samples])
            ratio = cell[metric] / results["throughput"]["tensorflow"][workload][metric]
            cells.append(f"{cell[metric]:.1f} ({low:.0f}..{high:.0f}) {ratio:.2f}x")
        others = statistics.median(
            share for cell in by_workload.values() for share in cell["others_cpu_share"]
        )
        lines.append(
            f"| `{name}` | " + " | ".join(cells) + f" | {others:.0%} | {results['load_seconds'][name]:.1f} |"
        )
    return lines


def render_report(results: dict[str, Any], model_description: str, command: str) -> str:
    tolerance = results["tolerance"]
    workloads: list[str] = results["workloads"]
    decision_workload = workloads[-2]  # the largest single-caller batch: what server-side batching sends
    default = choose_default(results, decision_workload)
    lines = [
        "# Runtime comparison: TensorFlow vs OpenVINO f32 / bf16 / int8 on this CPU",
        "",
        f"Model: {model_description}  ",
        f"Version folder: `{results['version_path']}`; images: {results['evaluation_images']} val+test "
        f"images of `{results['data']}` (decoded by common.preprocessing); int8 calibrated on "
        f"{results['calibration_images']} train images (seed {SEED}).  ",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores "
        f"({', '.join(results['machine']['openvino_capabilities'])}); "
        + ", ".join(f"{package} {version}" for package, version in results["versions"].items())
        + f"; {results['created_at']}.  ",
        f"Produced by `{command}` (numbers also in the .json beside this file).",
        "",
        "## Agreement with TensorFlow (the reference: TF Serving runs the same graph in TensorFlow)",
        "",
        f"Tolerance for a CPU default: max |Δ probability| <= {tolerance['max_probability_difference']} "
        f"and {tolerance['min_label_agreement']:.0%} label agreement at the model's threshold, "
        "on all val+test images.",
        "",
        "| runtime | max abs Δ probability | mean abs Δ probability | max abs Δ logit | labels agreeing | "
        "TF probability of flipped images | accuracy vs truth | within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["agreement"].items():
        flipped = ", ".join(f"{value:.3f}" for value in result["flipped_reference_probabilities"][:8]) or "-"
        lines.append(
            f"| `{name}` | {result['max_abs_probability_difference']:.2e} | "
            f"{result['mean_abs_probability_difference']:.2e} | {result['max_abs_logit_difference']:.2e} | "
            f"{result['labels_agreeing']} / {result['count']} | {flipped} | {result['accuracy']:.4f} | "
            f"{'yes' if results['within_tolerance'][name] else '**no**'} |"
        )
    lines += [
        "",
        f"## Speed (median of {results['rounds']} rounds, min..max in brackets, ratio to TensorFlow; "
        f"runtimes take turns inside each round; ~{results['images_per_measurement']} images each)",
        "",
        "`batch N`: one caller sending batches of N (server-side batching sends such batches). "
        "`N callers x 1`: N threads each sending one image per call (a server without batching). "
        "`others' CPU`: median share of both cores other processes used meanwhile (the CPU is shared).",
        "",
        "**Images per CPU-second of this process** (efficiency: what a dedicated machine turns into "
        "throughput; robust to other processes' load):",
        "",
        *_throughput_table(results, "median_per_cpu_second", "images_per_cpu_second"),
        "",
        "**Images per second, wall clock** (under heavy load from other processes this measures how "
        "much CPU a runtime's threads win as much as how fast it is):",
        "",
        *_throughput_table(results, "median", "images_per_second"),
        "",
        "Runtimes: "
        + "; ".join(f"`{name}` = {text}" for name, text in results["descriptions"].items())
        + ".",
        "",
        "## Decision",
        "",
        f"Rule: among the runtimes within tolerance, the most efficient at `{decision_workload}` (the "
        f"batch size server-side batching forms under load), if it beats TensorFlow by at least "
        f"{MINIMUM_SPEEDUP:.2f}x; otherwise TensorFlow, the reference.",
        "",
        f"**CPU default: `{default}`** "
        f"({results['throughput'][default][decision_workload]['median_per_cpu_second']:.1f} images per "
        f"CPU-second at `{decision_workload}`; TensorFlow "
        f"{results['throughput']['tensorflow'][decision_workload]['median_per_cpu_second']:.1f}).",
        "",
    ]
    reference_efficiency = {
        workload: cell["median_per_cpu_second"]
        for workload, cell in results["throughput"]["tensorflow"].items()
    }
    for name, accepted in results["within_tolerance"].items():
        if accepted and name not in (default, "tensorflow"):
            ratios = ", ".join(
                f"{cell['median_per_cpu_second'] / reference_efficiency[workload]:.2f}x at `{workload}`"
                for workload, cell in results["throughput"][name].items()
            )
            lines.append(
                f"- `{name}` is within tolerance; images per CPU-second against TensorFlow: {ratios}."
            )
    rejected = [name for name, accepted in results["within_tolerance"].items() if not accepted]
    for name in rejected:
        result = results["agreement"][name]
        lines.append(
            f"- `{name}` is outside the tolerance: max |Δ probability| "
            f"{result['max_abs_probability_difference']:.3f}, "
            f"{result['count'] - result['labels_agreeing']} of {result['count']} labels flipped."
        )
    if not rejected:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Why the reduced precisions miss although their accuracy against the true labels barely "
        "moves: bfloat16 keeps 8 bits of mantissa (2-3 significant digits) and int8 256 levels per "
        "tensor; rounding every layer moves the pooled features, and images whose probability lies "
        "within a few hundredths of the threshold change side. A user would see a different answer "
        "than TF Serving gives for the same image, which the contract (the local server answers as "
        "TF Serving does) rules out. They stay available for anyone who accepts that "
        "(`OpenVINORuntime(path, precision=...)`).",
    ]
    return "\n".join(lines) + "\n"


def describe_model(version_path: Path) -> str:
    card = version_path / signatures.MODEL_CARD_FILE
    if card.is_file():
        content = json.loads(card.read_text())
        fields = [
            f"{key} {content[key]}" for key in ("backbone", "threshold", "temperature") if key in content
        ]
        return f"model card of `{version_path}`: " + ", ".join(fields)
    return f"`{version_path}` (no model card)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving.benchmark_runtimes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("version_path", type=Path, help="an exported SavedModel version folder")
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/ai-vs-real"), help="manifest.csv data set"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/runtime-comparison.md"))
    parser.add_argument(
        "--model-description", help="what the model is, for the report (default: its model card)"
    )
    parser.add_argument("--calibration-size", type=int, default=300, help="train images for int8 calibration")
    parser.add_argument(
        "--batch-sizes", default="1,8,16", help="comma-separated; the last one decides the default"
    )
    parser.add_argument("--concurrent-callers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images-per-measurement", type=int, default=96)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    results = benchmark(
        arguments.version_path,
        arguments.data,
        arguments.calibration_size,
        [int(size) for size in arguments.batch_sizes.split(",")],
        arguments.concurrent_callers,
        arguments.rounds,
        arguments.images_per_measurement,
    )
    command = "python -m serving.benchmark_runtimes " + " ".join(argv if argv is not None else sys.argv[1:])
    report = render_report(
        results, arguments.model_description or describe_model(arguments.version_path), command
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(report)
    arguments.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
