"""Export a training run as a new TF Serving version: `python -m export.export --help`.

    python -m export.export runs/efficientnet_lite0 --models-dir models --name ai_detector

Writes `models/<name>/<version>/` (SavedModel with its three signatures, warmup records, model card).
Everything is written into a hidden staging folder inside `models/<name>/` first (TF Serving and
the local server only read integer folder names), validated in a fresh process, and only then
renamed to `<version>` in one step: a model server never sees a half-written version, a failed
export leaves nothing behind, and an existing version is never overwritten. The version is
max(existing) + 1 unless `--version` is given.
"""

from __future__ import annotations

import gc
import logging
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from common import model_versions, signatures
from common.logs import configure_logging
from common.model_config import DEFAULT_MODEL_NAME
from export.errors import ExportError, VersionExistsError
from training.run_folder import TrainingRun

logger = logging.getLogger("export")

STAGING_PREFIX = ".export-"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    version: int
    variant: str
    card: dict[str, Any]


def _measure_candidates(
    run: TrainingRun, reference: Any, names: list[str], staging: Path, rounds: int
) -> dict[str, Any]:
    """Write each candidate (each in a child process), load it back, measure its speed and agreement.

    `names[0]` is the reference (fp32).
    """
    from common.machine import OtherLoadMonitor
    from export import measure
    from export.optimize import write_variant_in_fresh_process

    results: dict[str, dict[str, Any]] = {}
    monitor = OtherLoadMonitor().start()
    for name in names:
        write_variant_in_fresh_process(run.model_path, staging / name, name, run.temperature, run.threshold)
        loaded, loaded_signatures = measure.load_signatures(staging / name)
        serving = loaded_signatures[signatures.SERVING_SIGNATURE]
        outputs = measure.run_images(serving, reference.images)
        results[name] = {
            "agreement": measure.agreement(
                outputs[signatures.OUTPUT_PROBABILITY],
                reference.probabilities(reference.image_logits, run.temperature),
                run.threshold,
                outputs[signatures.OUTPUT_LOGIT],
                reference.image_logits,
            ),
            "speed": measure.speed(serving, reference.images[:1], batch_sizes=(1,), rounds=rounds)
            | measure.speed(serving, reference.images[:32], batch_sizes=(32,), rounds=rounds),
        }
        logger.info("variant %s: %s", name, results[name])
        del loaded, loaded_signatures, serving
        gc.collect()
    other_load = monitor.stop()
    logger.info("while measuring the variants, %s", other_load.describe())
    for result in results.values():
        result["other_processes_cpu_share"] = round(other_load.share_of_machine, 3)
    return results


def export_run(
    run_dir: Path,
    models_dir: Path,
    name: str = DEFAULT_MODEL_NAME,
    version: int | None = None,
    variant_name: str = "auto",
    data: Path | None = None,
    warmup_batch_sizes: list[int] | None = None,
    batching_config: Path | None = None,
    tolerance: Any = None,
    speed_rounds: int = 3,
) -> ExportResult:
    """Export `run_dir` into `models_dir/name/<version>`; see the module docstring."""
    from common.repository import code_version
    from export import warmup
    from export.graph import save_serving_module
    from export.model_card import build_model_card, write_model_card
    from export.optimize import (
        AUTO,
        AUTO_CANDIDATES,
        REFERENCE_VARIANT,
        Tolerance,
        build_serving_module,
        choose_variant,
        variant,
    )
    from export.reference import build_reference_set, with_keras_logits
    from export.validate import require_pass, run_gate

    tolerance = tolerance or Tolerance()
    if variant_name != AUTO:
        variant(variant_name)  # refuse an unknown name before any work
    if version is not None and version < 1:
        raise ExportError(f"versions are positive integers, got {version}")
    run = TrainingRun.load(run_dir)
    model_dir = Path(models_dir) / name
    if version is not None and version in model_versions.versions(model_dir):
        raise VersionExistsError(f"{model_dir / str(version)} exists; versions are never overwritten")
    data_path = run.data_path(data)
    batch_sizes = warmup_batch_sizes or (
        warmup.batch_sizes_from_batching_config(batching_config)
        if batching_config
        else warmup.default_batch_sizes()
    )
    if not batch_sizes:
        raise ExportError(f"{batching_config} names no batch sizes (allowed_batch_sizes or max_batch_size)")

    logger.info("loading %s and the validation images of %s", run.model_path, data_path)
    classifier = run.load_classifier()
    reference = with_keras_logits(build_reference_set(run.split_files("val", data)), classifier)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        export_info: dict[str, Any] = {"tolerance": tolerance.to_dict(), "warmup_batch_sizes": batch_sizes}
        if variant_name == AUTO:
            candidates = [REFERENCE_VARIANT, *(name for name in AUTO_CANDIDATES if name != REFERENCE_VARIANT)]
            measured = _measure_candidates(run, reference, candidates, staging, speed_rounds)
            chosen = choose_variant(measured, tolerance)
            export_info["candidates"] = measured
            logger.info("chose variant %s", chosen)
        else:
            chosen = variant_name
            save_serving_module(
                build_serving_module(classifier, run.temperature, run.threshold, variant(chosen)),
                staging / chosen,
            )
        export_info |= {"variant": chosen, "description": variant(chosen).description}
        saved_model_dir = staging / chosen
        warmup.write_warmup(
            saved_model_dir, warmup.warmup_records(name, reference.images, reference.files, batch_sizes)
        )
        logger.info("validating %s in a fresh process", saved_model_dir)
        gate_report = run_gate(saved_model_dir, reference, run.temperature, run.threshold, tolerance)
        require_pass(gate_report)

        target_version = version if version is not None else model_versions.next_version(model_dir)
        card = build_model_card(
            run, name, target_version, data_path, export_info, gate_report, code_version()
        )
        write_model_card(saved_model_dir, card)
        target = model_dir / str(target_version)
        if target_version in model_versions.versions(model_dir):
            raise VersionExistsError(f"{target} appeared while exporting; versions are never overwritten")
        try:
            # One rename: a model server polling the folder sees no version or a complete one.
            # It fails if `target` exists and is non-empty, as every finished version is.
            saved_model_dir.rename(target)
        except OSError as error:
            raise VersionExistsError(f"could not move the export to {target}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s (variant %s)", target, chosen)
    return ExportResult(path=target, version=target_version, variant=chosen, card=card)


def _exit_on_sigterm(signal_number: int, frame: object) -> None:
    # SIGTERM (a timeout, `kill`, a CI job ending) would end the process without running
    # `finally`, leaving the staging folder behind; as SystemExit it unwinds and cleans up.
    raise SystemExit(128 + signal_number)


def _parse_batch_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def main(
    run_dir: Annotated[
        Path, typer.Argument(help="Training run folder (model.keras, config.json, evaluation.json)")
    ],
    models_dir: Annotated[
        Path, typer.Option(help="Model base folder; the version goes to <models-dir>/<name>/")
    ] = Path("models"),
    name: Annotated[
        str, typer.Option(help="Model name (the folder under --models-dir)")
    ] = DEFAULT_MODEL_NAME,
    version: Annotated[
        int | None, typer.Option(help="Version number (default: highest existing + 1)")
    ] = None,
    variant: Annotated[
        str,
        typer.Option(
            help="auto (fastest variant within the tolerance, measured now) or one of: fp32, frozen, folded"
        ),
    ] = "auto",
    data: Annotated[
        Path | None, typer.Option(help="The run's data set (default: config.json's `data`)")
    ] = None,
    warmup_batch_sizes: Annotated[
        str | None,
        typer.Option(help="Comma-separated warmup batch sizes (default: serving/batching.cpu.config's)"),
    ] = None,
    batching_config: Annotated[
        Path | None,
        typer.Option(help="TF Serving batching config whose allowed_batch_sizes the warmup covers"),
    ] = None,
    max_probability_difference: Annotated[
        float, typer.Option(help="Tolerance: max |probability - Keras| on the validation images")
    ] = 0.01,
) -> None:
    """Export a trained model as a new, validated TF Serving version."""
    from export.optimize import Tolerance

    configure_logging(stream=sys.stderr)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = export_run(
            run_dir,
            models_dir,
            name=name,
            version=version,
            variant_name=variant,
            data=data,
            warmup_batch_sizes=_parse_batch_sizes(warmup_batch_sizes),
            batching_config=batching_config,
            tolerance=Tolerance(max_abs_probability_difference=max_probability_difference),
        )
    except (ExportError, ValueError) as error:
        typer.echo(f"export failed: {error}", err=True)
        raise typer.Exit(code=1) from error
    validation = result.card["export"]["validation"]
    served, from_bytes = validation[signatures.SERVING_SIGNATURE], validation[signatures.BYTES_SIGNATURE]
    typer.echo(
        f"exported {result.path} (variant {result.variant}); max |probability - Keras| on validation images: "
        f"{served['max_abs_probability_difference']:.2g}, bytes signature "
        f"{from_bytes['max_abs_probability_difference']:.2g}"
    )


if __name__ == "__main__":
    typer.run(main)
