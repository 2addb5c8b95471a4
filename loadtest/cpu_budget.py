"""Where the CPU goes: core-milliseconds per request, process by process, at saturation.

    python -m loadtest.benchmark cpu-budget [--models resnet50,starter] [--repeats 3] [--seconds 20]

On these 2 cores the load generator, the gateway and the model server share the CPU with the
model itself, so when the machine is saturated the stack completes at most
2 cores x 1000 ms / (core-ms of every process per request) requests per second, while the raw
ceiling is 2 x 1000 / (the model's core-ms per image at its best batch size). Their quotient
bounds "saturation / raw ceiling" whatever the serving does. This measures both sides with the
processes' own CPU times (psutil, before and after a closed-loop step):

Each repeat measures, in this order:

1. the raw model in process (`loadtest/raw_model.py`, which reports CPU time per image),
2. the stack on the real uploads, one image per request,
3. the stack on the same images as the data set stores them (<= 384 px JPEG quality 90: little to
   decode, nothing to scale or compress again; before 2026-12-02, canonical 256x256 PNG): what the
   serving path costs when the upload's decode is taken out.

Retired in issue 15, their measured numbers kept in docs/performance.md: the one-core-each
topology (model server alone on CPU 0, gateway and load generator on CPU 1), and a what-if of
JPEG DCT-domain decoding (the canonical normalization now decodes JPEGs with DCT scaling itself).

The results go to results/benchmark/<stamp>/cpu_budget.json and between the cpu-budget markers
of docs/performance.md.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from common.machine import machine_description
from common.preprocessing import dataset_form_file
from common.repository import DEFAULT_BATCHING_FILE, code_version
from loadtest import generator, stages
from loadtest.benchmark_models import BenchmarkModel
from loadtest.benchmark_report import write_into
from loadtest.samples import MultipartUpload, UploadSample, load_uploads, multipart_upload
from loadtest.stack import LocalStack
from loadtest.systems import (
    START_TIMEOUT_SECONDS,
    display_path,
    measure_raw,
    model_workspace,
    stack_system,
)

BEGIN_MARKER = "<!-- cpu-budget:begin -->"
END_MARKER = "<!-- cpu-budget:end -->"
PROCESSES = ("load generator", "gateway", "model server")
RAW_BATCH_SIZES = (1, 32)  # batch 1, and the best batch size of the benchmark's raw tables


def cpu_seconds(process_id: int, with_descendants: bool) -> float:
    """User + system CPU seconds of a process, and of its descendants if asked (0 when it is gone)."""
    try:
        root = psutil.Process(process_id)
        processes = [root, *root.children(recursive=True)] if with_descendants else [root]
        return sum(sum(process.cpu_times()[:2]) for process in processes)  # user + system
    except psutil.Error:
        return 0.0


def cpu_readings(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of the load generator (this process alone: the servers are its children),
    the gateway and the model server (each with any process it started)."""
    process_ids = stack.process_ids()
    return {
        "load generator": cpu_seconds(os.getpid(), with_descendants=False),
        "gateway": cpu_seconds(process_ids["gateway"], with_descendants=True),
        "model server": cpu_seconds(process_ids["model server"], with_descendants=True),
    }


def resized_uploads(samples: list[UploadSample]) -> list[MultipartUpload]:
    """The same images as the data set stores them (JPEG quality 90, at most 384 px): the same
    canonical image, with little left to decode and nothing to scale or compress again."""
    uploads = []
    for sample in samples:
        resized = UploadSample(
            filename=Path(sample.filename).stem + "-dataset-form.jpg",
            label=sample.label,
            data=dataset_form_file(sample.data),
            content_type="image/jpeg",
        )
        uploads.append(multipart_upload(resized))
    return uploads


@dataclass
class BudgetStep:
    """One closed-loop step on the stack, with every process's CPU per completed request."""

    uploads: str
    completed: int
    failed: int
    seconds: float
    p95_ms: float
    cpu_ms_per_request: dict[str, float]
    other_ms_per_request: float
    idle_ms_per_request: float  # capacity (cores x step) minus all of the above, per request
    capacity_ms_per_request: float
    breakdown: dict[str, Any] | None

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds

    @property
    def total_ms_per_request(self) -> float:
        return sum(self.cpu_ms_per_request.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "uploads": self.uploads,
            "completed": self.completed,
            "failed": self.failed,
            "seconds": self.seconds,
            "throughput": round(self.throughput, 2),
            "p95_ms": round(self.p95_ms, 1),
            "cpu_ms_per_request": {name: round(value, 2) for name, value in self.cpu_ms_per_request.items()},
            "total_ms_per_request": round(self.total_ms_per_request, 2),
            "other_ms_per_request": round(self.other_ms_per_request, 2),
            "idle_ms_per_request": round(self.idle_ms_per_request, 2),
            "capacity_ms_per_request": round(self.capacity_ms_per_request, 2),
            "breakdown": self.breakdown,
        }


def budget_step(
    stack: LocalStack, uploads: list[MultipartUpload], name: str, concurrency: int, seconds: float
) -> BudgetStep:
    generator.closed_loop(stack.gateway_url, uploads, 2, 5.0, seed=1)  # warm-up, discarded
    system = stack_system(stack)
    metrics_before = system.snapshot()
    before = cpu_readings(stack)
    step = generator.closed_loop(stack.gateway_url, uploads, concurrency, seconds, seed=2)
    after = cpu_readings(stack)
    metrics_after = system.snapshot()
    assert metrics_before is not None and metrics_after is not None  # a stack has both metrics URLs
    requests = max(step.completed + step.failed, 1)
    used = {label: 1000 * (after[label] - before[label]) / requests for label in PROCESSES}
    other = 1000 * float(step.other_load.get("seconds", 0.0)) / requests
    capacity = 1000 * step.seconds * (psutil.cpu_count() or 1) / requests
    breakdown = stages.breakdown(metrics_before[0], metrics_after[0], metrics_before[1], metrics_after[1])
    return BudgetStep(
        uploads=name,
        completed=step.completed,
        failed=step.failed,
        seconds=step.seconds,
        p95_ms=step.p95_ms,
        cpu_ms_per_request=used,
        other_ms_per_request=other,
        idle_ms_per_request=capacity - sum(used.values()) - other,
        capacity_ms_per_request=capacity,
        breakdown=breakdown.to_dict(),
    )


def report(step: BudgetStep) -> None:
    print(
        f"  {step.uploads}: {step.throughput:.1f} req/s, "
        + ", ".join(f"{label} {value:.1f}" for label, value in step.cpu_ms_per_request.items())
        + f" core-ms/request, idle {step.idle_ms_per_request:.1f}",
        flush=True,
    )


def measure_once(
    model: BenchmarkModel,
    samples: list[UploadSample],
    uploads_directory: Path,
    results_folder: Path,
    concurrency: int,
    seconds: float,
    raw_seconds: float,
) -> dict[str, Any]:
    """The raw model, then a fresh stack on both kinds of uploads."""
    raw = measure_raw(model, raw_seconds, RAW_BATCH_SIZES, uploads_directory)
    real_uploads = [multipart_upload(sample) for sample in samples]
    models, config_file = model_workspace(model, results_folder / "workspace")
    stack = LocalStack(
        models, config_file, results_folder / "logs" / model.key, batching_file=DEFAULT_BATCHING_FILE
    )
    stack.start(START_TIMEOUT_SECONDS)
    steps = []
    try:
        for name, uploads in (
            ("real uploads", real_uploads),
            ("the same images in the data set's form (<= 384 px JPEG q90)", resized_uploads(samples)),
        ):
            step = budget_step(stack, uploads, name, concurrency, seconds)
            report(step)
            steps.append(step.to_dict())
    finally:
        stack.stop()
    return {"raw": raw, "steps": steps}


@dataclass(frozen=True)
class BudgetSettings:
    repeats: int
    seconds: float  # closed-loop time of each row
    concurrency: int
    raw_seconds: float  # per batch size, in process


def measure_model(
    model: BenchmarkModel,
    samples: list[UploadSample],
    uploads_directory: Path,
    results_folder: Path,
    settings: BudgetSettings,
) -> dict[str, Any]:
    repeats = []
    for repeat in range(settings.repeats):
        print(f"{model.description}, repeat {repeat + 1}/{settings.repeats}", flush=True)
        repeats.append(
            measure_once(
                model,
                samples,
                uploads_directory,
                results_folder,
                settings.concurrency,
                settings.seconds,
                settings.raw_seconds,
            )
        )
    return {
        "model": model.key,
        "description": model.description,
        "variant": model.variant,
        "repeats": repeats,
    }


def table_row(repeat: dict[str, Any], step: dict[str, Any], cores: int) -> dict[str, float]:
    """The figures of one repeat's row; the table quotes their medians.

    Sharing the cores, the CPU bound on requests/s is cores x 1000 / (all three processes' core-ms)
    and the predicted stack ÷ ceiling is the model's core-ms ÷ all three."""
    raw = repeat["raw"]
    per_image = raw["batch_sizes"]  # JSON keys: the batch sizes as strings
    model_ms = float(per_image[str(raw["best_batch_size"])]["cpu_milliseconds_per_image"])
    ceiling = float(raw["best_images_per_second"])
    used = step["cpu_ms_per_request"]
    total = float(step["total_ms_per_request"])
    return {
        "throughput": float(step["throughput"]),
        "load generator": float(used["load generator"]),
        "gateway": float(used["gateway"]),
        "model server": float(used["model server"]),
        "total": total,
        "other": float(step["other_ms_per_request"]),
        "idle": float(step["idle_ms_per_request"]),
        "bound": cores * 1000 / total,
        "model_ms": model_ms,
        "batch1_ms": float(per_image["1"]["cpu_milliseconds_per_image"]),
        "ceiling": ceiling,
        "ratio": float(step["throughput"]) / ceiling,
        "share": model_ms / total,
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        BEGIN_MARKER,
        "",
        f"_Generated by `python -m loadtest.benchmark cpu-budget` on {results['written_at']}, code "
        f"`{results['code_version']}`; machine: {results['machine']['cpu']}, "
        f"{results['machine']['logical_cpus']} logical CPUs. {results['repeats']} repeats (raw model, then a "
        f"fresh stack), each row {results['seconds']:g} s closed loop with {results['concurrency']} clients, "
        "batching `serving/batching.cpu.config`; cells are medians over the repeats (min–max)._",
        "",
        "Core-milliseconds of CPU per completed request (user + system time of each process, summed over "
        "both cores, divided by the requests of the step):",
        "",
        "| model | uploads | req/s | load generator | gateway | model server | all three | other processes "
        "| idle | CPU bound on req/s "
        "| model alone in process: core-ms per image at its best "
        "batch size (at batch 1) | raw ceiling img/s | stack ÷ ceiling "
        "| the CPU accounting's prediction of it |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cores = results["machine"]["logical_cpus"]
    for entry in results["models"]:
        for index, uploads in enumerate(entry["repeats"][0]["steps"]):
            rows = [table_row(repeat, repeat["steps"][index], cores) for repeat in entry["repeats"]]

            def median(key: str, rows: list[dict[str, float]] = rows) -> float:
                return statistics.median(row[key] for row in rows)

            def spread(key: str, digits: int, rows: list[dict[str, float]] = rows) -> str:
                values = [row[key] for row in rows]
                text = f"{statistics.median(values):.{digits}f}"
                return (
                    text
                    if len(values) == 1
                    else f"{text} ({min(values):.{digits}f}–{max(values):.{digits}f})"
                )

            lines.append(
                f"| {entry['description']} (`{entry['variant']}`) | {uploads['uploads']} "
                f"| {spread('throughput', 1)} | {median('load generator'):.1f} | {median('gateway'):.1f} "
                f"| {median('model server'):.1f} | {spread('total', 1)} | {median('other'):.1f} "
                f"| {median('idle'):.1f} | {median('bound'):.1f} "
                f"| {median('model_ms'):.1f} ({median('batch1_ms'):.1f}) | {median('ceiling'):.1f} "
                f"| {spread('ratio', 2)} | {spread('share', 2)} |"
            )
    lines += [
        "",
        "Sharing both cores, the CPU bound is cores x 1000 ÷ all three processes' core-ms per request and "
        "the predicted stack ÷ ceiling is the model's core-ms ÷ all three.",
        "",
        f"Raw numbers: `{results['results_folder']}/cpu_budget.json` (not committed).",
        "",
        END_MARKER,
    ]
    return "\n".join(lines)


def run_budget(
    models: list[BenchmarkModel],
    settings: BudgetSettings,
    uploads_directory: Path,
    results_folder: Path,
    output: Path,
) -> dict[str, Any]:
    """Measure every model; write cpu_budget.json into `results_folder` and the section into `output`."""
    samples = load_uploads(uploads_directory)
    try:
        measured = [
            measure_model(model, samples, uploads_directory, results_folder, settings) for model in models
        ]
    finally:
        shutil.rmtree(results_folder / "workspace", ignore_errors=True)
    results = {
        "models": measured,
        "seconds": settings.seconds,
        "repeats": settings.repeats,
        "concurrency": settings.concurrency,
        "machine": machine_description(),
        "code_version": code_version(),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "results_folder": display_path(results_folder),
    }
    (results_folder / "cpu_budget.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    section = render(results)
    write_into(output, section, BEGIN_MARKER, END_MARKER)
    print(section)
    return results
