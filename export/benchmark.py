"""Measure every export variant side by side in one run: `python -m export.benchmark --help`.

    python -m export.benchmark --run runs/efficientnet_lite0 --resnet50 --output docs/export-benchmark.json

For each model (a trained run, and ResNet50 with random weights for speed), every variant is
written as a SavedModel, loaded back with tf.saved_model.load (the saved graph, optimized on load
as TF Serving does) and measured: agreement with the Keras model on the run's validation images,
and speed at batch 1, 8 and 32 with real images. The CPU is shared, so the variants are timed
round-robin in several passes (each pass: median of `rounds` rounds of ~1 s) and the table shows
the median over passes, with the other processes' share of the CPU during each pass.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

BATCH_SIZES = (1, 8, 32)


def benchmark_model(
    label: str,
    model_path: Path,
    temperature: float,
    threshold: float,
    reference: Any,
    variant_names: list[str],
    passes: int,
    rounds: int,
    scratch: Path,
) -> dict[str, Any]:
    """Build every variant of the classifier at `model_path`, then time them round-robin.

    Variants are built in child processes and loaded one at a time (a ResNet50 variant holds
    1-1.5 GB), so a pass loads each variant again; timing starts after a warm-up call.
    """
    from common import signatures
    from common.machine import OtherLoadMonitor
    from export import measure
    from export.optimize import (
        REFERENCE_VARIANT,
        Tolerance,
        variant,
        write_variant_in_fresh_process,
    )

    tolerance = Tolerance()
    results: dict[str, Any] = {"model": label, "variants": {}, "passes": []}
    for name in variant_names:
        started = time.monotonic()
        write_variant_in_fresh_process(model_path, scratch / label / name, name, temperature, threshold)
        build_seconds = time.monotonic() - started
        size = sum(path.stat().st_size for path in (scratch / label / name).rglob("*") if path.is_file())
        results["variants"][name] = {
            "description": variant(name).description,
            "saved_megabytes": round(size / 1e6, 1),
            "build_seconds": round(build_seconds, 1),
            "speed_passes": [],
        }
        print(f"[{label}] {name}: built and saved in {build_seconds:.0f} s, {size / 1e6:.1f} MB", flush=True)

    images = reference.images[:32]
    timed = list(variant_names)
    for pass_index in range(passes):
        monitor = OtherLoadMonitor().start()
        for name in timed:
            loaded, loaded_signatures = measure.load_signatures(scratch / label / name)
            serving = loaded_signatures[signatures.SERVING_SIGNATURE]
            measured = measure.speed(serving, images, batch_sizes=BATCH_SIZES, rounds=rounds)
            described = results["variants"][name]
            described["speed_passes"].append(measured)
            print(f"[{label}] pass {pass_index + 1} {name}: {measured}", flush=True)
            if pass_index == 0:
                outputs = measure.run_images(serving, reference.images)
                agreement = measure.agreement(
                    outputs[signatures.OUTPUT_PROBABILITY],
                    reference.probabilities(reference.image_logits, temperature),
                    threshold,
                    outputs[signatures.OUTPUT_LOGIT],
                    reference.image_logits,
                )
                described |= {"agreement": agreement, "within_tolerance": not tolerance.problems(agreement)}
                print(f"[{label}] {name}: {agreement}", flush=True)
            del loaded, loaded_signatures, serving
            gc.collect()
        share = round(monitor.stop().share_of_machine, 3)
        results["passes"].append({"variants": list(timed), "other_processes_cpu_share": share})
        print(f"[{label}] pass {pass_index + 1}: other processes used {share:.0%} of the CPU", flush=True)

    for described in results["variants"].values():
        described["speed"] = {
            size: {
                "ms_per_batch": statistics.median(
                    one[size]["ms_per_batch"] for one in described["speed_passes"]
                ),
                "images_per_second": statistics.median(
                    one[size]["images_per_second"] for one in described["speed_passes"]
                ),
            }
            for size in described["speed_passes"][0]
        }
    if REFERENCE_VARIANT in results["variants"]:
        from export.optimize import speed_score

        reference_result = results["variants"][REFERENCE_VARIANT]
        for described in results["variants"].values():
            described["speed_score"] = round(speed_score(described, reference_result), 2)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        f"**{results['model']}** (other processes' CPU share per pass: "
        + ", ".join(f"{one['other_processes_cpu_share']:.0%}" for one in results["passes"])
        + ")",
        "",
        "| variant | ms, batch 1 | img/s, batch 8 | img/s, batch 32 | best img/s | score vs fp32 "
        "| max abs prob diff | label flips | max abs logit diff | MB | within tolerance | passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, described in results["variants"].items():
        speed = described["speed"]
        best = max(speed, key=lambda size: speed[size]["images_per_second"])
        agreement = described["agreement"]
        lines.append(
            f"| `{name}` | {speed['1']['ms_per_batch']:.1f} | {speed['8']['images_per_second']:.1f} "
            f"| {speed['32']['images_per_second']:.1f} | {speed[best]['images_per_second']:.1f} (bs {best}) "
            f"| {described.get('speed_score', float('nan')):.2f} "
            f"| {agreement['max_abs_probability_difference']:.2e} "
            f"| {agreement['label_flips']}/{agreement['count']} "
            f"| {agreement.get('max_abs_logit_difference', 0):.2e} "
            f"| {described['saved_megabytes']} | {'yes' if described['within_tolerance'] else 'no'} "
            f"| {len(described['speed_passes'])} |"
        )
    return "\n".join(lines)


def main(
    run: Annotated[
        Path | None, typer.Option(help="A trained run to benchmark (its validation images too)")
    ] = None,
    resnet50: Annotated[bool, typer.Option(help="Also benchmark ResNet50 with random weights")] = False,
    data: Annotated[Path | None, typer.Option(help="Data set for the images (default: the run's)")] = None,
    variants: Annotated[str, typer.Option(help="Comma-separated variants (default: all)")] = "",
    passes: Annotated[int, typer.Option(help="Round-robin timing passes over all variants")] = 3,
    rounds: Annotated[int, typer.Option(help="Timed rounds (~1 s each) per batch size per pass")] = 3,
    agreement_images: Annotated[int, typer.Option(help="Validation images for the agreement (0 = all)")] = 0,
    output: Annotated[Path | None, typer.Option(help="Write the measurements as JSON here")] = None,
) -> None:
    """Benchmark all export variants side by side and print a markdown table."""

    import keras
    import tensorflow as tf

    from common.machine import describe_machine
    from common.repository import SHARED_DATA
    from export.optimize import VARIANTS
    from export.reference import build_reference_set, validation_files, with_keras_logits
    from export.run import TrainingRun

    variant_names = [name.strip() for name in variants.split(",") if name.strip()] or list(VARIANTS)
    training_run = TrainingRun.load(run) if run else None
    data_path = training_run.data_path(data) if training_run else (data or SHARED_DATA)
    paths = validation_files(data_path, training_run.config.get("limit_per_split") if training_run else None)
    paths = paths[:agreement_images] if agreement_images else paths
    report: dict[str, Any] = {
        "machine": describe_machine(),
        "tensorflow": tf.__version__,
        "passes": passes,
        "rounds": rounds,
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="aidetect-benchmark-") as scratch:
        if training_run is not None:
            classifier = training_run.load_classifier()
            reference = with_keras_logits(build_reference_set(paths), classifier)
            label = f"{training_run.backbone} (trained: {training_run.directory.name})"
            report["models"].append(
                benchmark_model(
                    label.split(" ")[0] + "_trained",
                    training_run.model_path,
                    training_run.temperature,
                    training_run.threshold,
                    reference,
                    variant_names,
                    passes,
                    rounds,
                    Path(scratch),
                )
                | {"model": label}
            )
            del classifier
            gc.collect()
        if resnet50:
            from training.models import build_classifier

            keras.utils.set_random_seed(42)
            classifier = build_classifier("resnet50", None)
            classifier.save(Path(scratch) / "resnet50_random.keras")
            reference = with_keras_logits(build_reference_set(paths[:64]), classifier)
            report["models"].append(
                benchmark_model(
                    "resnet50_random",
                    Path(scratch) / "resnet50_random.keras",
                    1.0,
                    0.5,
                    reference,
                    variant_names,
                    passes,
                    rounds,
                    Path(scratch),
                )
                | {"model": "resnet50 (random weights, threshold 0.5)"}
            )
    for results in report["models"]:
        print()
        print(markdown_table(results))
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
