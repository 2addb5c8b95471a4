"""Benchmarks of the whole system, side by side in one run: `python -m loadtest.benchmark --help`.

    python -m loadtest.benchmark --models resnet50 starter --repeats 3 --step-seconds 20

For each model (ResNet50 with random weights, and the starter model) and each repeat, measured
one after another on the same machine with the same uploads (../shared/data/uploads):

1. raw ceiling: the exported SavedModel called in process at batch sizes 1..32 (best img/s);
2. each system under test, started fresh on free loopback ports:
   - the stack: gateway + local model server with serving/batching.cpu.config (and any other
     `--batching-configs`), and the same stack with server-side batching off;
   - the baseline: the original design (loadtest/baseline_app.py: FastAPI + Keras model.predict
     per request, in one process);
   and for each: the saturation throughput (closed loop, `--concurrency` clients back to back),
   then the highest Poisson arrival rate whose p95 stays within the target (200 ms) with no
   failed request, found by bisection between 0 and the saturation throughput;
3. for the stack, where the time goes: the gateway's and the model server's own Prometheus
   histograms scraped around each step.

The order of the systems rotates between repeats; every figure is the median over repeats (with
the range). The tables are written into docs/performance.md between its `benchmark:begin` and
`benchmark:end` markers (the prose around them stays), the raw numbers to the results folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import model_config
from common.machine import machine_description
from common.model_config import DEFAULT_MODEL_NAME, STABLE_LABEL
from common.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessExitedError,
    StopRequestedError,
    answers_200,
    free_port,
    raise_stop,
    wait_until,
)
from common.repository import DEFAULT_BATCHING_FILE, REPO_ROOT, code_version
from loadtest import generator, stages
from loadtest.benchmark_models import (
    BenchmarkModel,
    BenchmarkModelError,
    find_starter,
    prepare_resnet50,
)
from loadtest.generator import StepResult
from loadtest.samples import MultipartUpload, load_uploads, multipart_upload
from loadtest.settings import P95_TARGET_MILLISECONDS, UPLOADS_DIRECTORY
from loadtest.stack import LocalStack, StackError

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "performance.md"
BEGIN_MARKER = "<!-- benchmark:begin -->"
END_MARKER = "<!-- benchmark:end -->"
START_TIMEOUT_SECONDS = 600.0
# Goals from the issue: stack saturation >= 0.9 x raw ceiling; >= 3x the baseline's rate within target.
CEILING_RATIO_GOAL = 0.9
BASELINE_RATIO_GOAL = 3.0
# Other processes above this share of the CPU during a step make its numbers provisional.
QUIET_MACHINE_SHARE = 0.10
BASELINE = "baseline"
NO_BATCHING = "stack-nobatch"


class BenchmarkError(RuntimeError):
    """The benchmark cannot run; the message says why."""


# ---------------------------------------------------------------- systems under test


@dataclass(frozen=True)
class SystemSpec:
    key: str
    description: str
    batching_file: Path | None = None

    @property
    def is_stack(self) -> bool:
        return self.key != BASELINE


def system_specs(batching_files: Sequence[Path], include_no_batching: bool) -> list[SystemSpec]:
    specs = []
    for index, batching_file in enumerate(batching_files):
        key = "stack" if index == 0 else f"stack-{batching_file.stem}"
        specs.append(
            SystemSpec(
                key, f"gateway + model server, batching `{display_path(batching_file)}`", batching_file
            )
        )
    if include_no_batching:
        specs.append(SystemSpec(NO_BATCHING, "gateway + model server, no server-side batching"))
    specs.append(SystemSpec(BASELINE, "baseline: one FastAPI process, Keras `model.predict` per request"))
    return specs


def display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass
class RunningSystem:
    url: str
    stop: Callable[[], None]
    gateway_metrics_url: str | None = None
    server_metrics_url: str | None = None

    def snapshot(self) -> tuple[stages.Snapshot, stages.Snapshot] | None:
        if self.gateway_metrics_url is None or self.server_metrics_url is None:
            return None
        return stages.scrape(self.gateway_metrics_url), stages.scrape(self.server_metrics_url)


def model_workspace(model: BenchmarkModel, workspace: Path) -> tuple[Path, Path]:
    """(models folder, models.config) serving `model` as ai_detector version 1, labelled stable."""
    root = workspace / model.key
    version_link = root / "models" / DEFAULT_MODEL_NAME / "1"
    if not version_link.exists():
        version_link.parent.mkdir(parents=True, exist_ok=True)
        version_link.symlink_to(model.version_dir.resolve(), target_is_directory=True)
    config = model_config.new_config(DEFAULT_MODEL_NAME, f"/models/{DEFAULT_MODEL_NAME}", [1])
    model_config.set_label(config, DEFAULT_MODEL_NAME, STABLE_LABEL, 1)
    config_file = root / "models.config"
    model_config.save(config, config_file)
    return root / "models", config_file


def start_stack(
    spec: SystemSpec, model: BenchmarkModel, workspace: Path, log_directory: Path
) -> RunningSystem:
    models, config_file = model_workspace(model, workspace)
    stack = LocalStack(models, config_file, log_directory, batching_file=spec.batching_file)
    stack.start(START_TIMEOUT_SECONDS)
    return stack_system(stack)


def stack_system(stack: LocalStack) -> RunningSystem:
    """A started stack as a system under test, with both services' metrics to scrape."""
    return RunningSystem(
        url=stack.gateway_url,
        stop=stack.stop,
        gateway_metrics_url=f"{stack.gateway_url}/metrics",
        server_metrics_url=stack.model_server_metrics_url,
    )


def start_baseline(model: BenchmarkModel, log_directory: Path) -> RunningSystem:
    if model.keras_model is None:
        raise BenchmarkError(f"no Keras model for the baseline of {model.description}")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "loadtest.baseline_app",
        f"--keras-model={model.keras_model}",
        f"--host={LOOPBACK}",
        f"--port={port}",
    ]
    process = ManagedProcess("baseline app", command, log_directory / "baseline.log").start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(
            lambda: answers_200(f"{url}/health"), START_TIMEOUT_SECONDS, "the baseline app answers",
            log=process.log_path, processes=[process],
        )  # fmt: skip
    except (TimeoutError, ProcessExitedError) as error:
        process.stop()
        raise StackError(f"the baseline app did not start: {error}") from error

    def stop() -> None:
        process.stop()

    return RunningSystem(url=url, stop=stop)


# ---------------------------------------------------------------- measuring one system


@dataclass(frozen=True)
class BenchmarkSettings:
    repeats: int
    step_seconds: float
    warmup_seconds: float
    concurrency: int
    search_steps: int
    p95_target_ms: float
    raw_seconds: float
    raw_batch_sizes: list[int]


@dataclass
class MeasuredStep:
    step: StepResult
    breakdown: dict[str, Any] | None = None
    target_ms: float = P95_TARGET_MILLISECONDS

    @property
    def within_target(self) -> bool:
        return self.step.failed == 0 and self.step.completed > 0 and self.step.p95_ms <= self.target_ms

    def to_dict(self) -> dict[str, Any]:
        return {**self.step.to_dict(), "within_target": self.within_target, "stages_ms": self.breakdown}


@dataclass
class SystemResult:
    system: str
    model: str
    repeat: int
    saturation: MeasuredStep
    rate_steps: list[MeasuredStep] = field(default_factory=list)

    @property
    def best_step(self) -> MeasuredStep | None:
        passing = [step for step in self.rate_steps if step.within_target]
        return max(passing, key=lambda step: step.step.offered_rate or 0.0, default=None)

    @property
    def max_rate_within_target(self) -> float:
        best = self.best_step
        return best.step.throughput if best is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "model": self.model,
            "repeat": self.repeat,
            "max_rate_within_target": round(self.max_rate_within_target, 2),
            "saturation": self.saturation.to_dict(),
            "rate_steps": [step.to_dict() for step in self.rate_steps],
        }


def measured(
    system: RunningSystem, run: Callable[[], StepResult], target_ms: float, describe: str
) -> MeasuredStep:
    before = system.snapshot()
    step = run()
    after = system.snapshot()
    breakdown = None
    if before is not None and after is not None:
        breakdown = stages.breakdown(before[0], after[0], before[1], after[1]).to_dict()
    result = MeasuredStep(step, breakdown, target_ms)
    print(
        f"    {describe}: {step.throughput:6.1f} req/s ok, "
        f"p50 {step.p50_ms:7.1f} ms, p95 {step.p95_ms:7.1f} ms, "
        f"failed {step.failed}, others {step.other_load.get('share_of_machine', 0):.0%} "
        f"{'(within target)' if result.within_target else ''}",
        flush=True,
    )
    return result


def measure_system(
    system: RunningSystem,
    spec: SystemSpec,
    model: BenchmarkModel,
    repeat: int,
    uploads: list[MultipartUpload],
    settings: BenchmarkSettings,
) -> SystemResult:
    seed = 1000 * repeat
    # Warm-up (discarded): connections, first calls, the server's batch shapes.
    generator.closed_loop(system.url, uploads, 2, settings.warmup_seconds, seed=seed)
    saturation = measured(
        system,
        partial(
            generator.closed_loop, system.url, uploads, settings.concurrency, settings.step_seconds, seed + 1
        ),
        settings.p95_target_ms,
        f"saturation, {settings.concurrency} clients",
    )
    result = SystemResult(spec.key, model.key, repeat, saturation)
    # Bisection on the arrival rate: within target below `low`, not at `high`.
    low, high = 0.0, max(saturation.step.throughput, 0.5)
    for index in range(settings.search_steps):
        rate = (low + high) / 2
        step = measured(
            system,
            partial(generator.open_loop, system.url, uploads, rate, settings.step_seconds, seed + 10 + index),
            settings.p95_target_ms,
            f"open loop {rate:6.2f} req/s",
        )
        result.rate_steps.append(step)
        if step.within_target:
            low = rate
        else:
            high = rate
    return result


def measure_raw(
    model: BenchmarkModel,
    seconds: float,
    batch_sizes: Sequence[int],
    uploads_directory: Path,
    cpus: frozenset[int] | None = None,
) -> dict[str, Any]:
    """The raw ceiling in a child process (on the CPUs `cpus` only, when given)."""
    command = [
        sys.executable,
        "-m",
        "loadtest.raw_model",
        str(model.version_dir),
        f"--seconds={seconds}",
        f"--uploads={uploads_directory}",
        "--batch-sizes",
        *(str(size) for size in batch_sizes),
    ]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        preexec_fn=partial(os.sched_setaffinity, 0, cpus) if cpus else None,
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"raw measurement failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"    raw SavedModel: best {result['best_images_per_second']:.1f} img/s at batch "
        f"{result['best_batch_size']}, others {result['other_load']['share_of_machine']:.0%}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------- the run


def rotated(items: list[SystemSpec], by: int) -> list[SystemSpec]:
    by %= len(items)
    return items[by:] + items[:by]


def run_benchmark(
    models: list[BenchmarkModel],
    specs: list[SystemSpec],
    settings: BenchmarkSettings,
    uploads_directory: Path,
    results_folder: Path,
) -> dict[str, Any]:
    uploads = [multipart_upload(sample) for sample in load_uploads(uploads_directory)]
    workspace = results_folder / "workspace"
    raw: list[dict[str, Any]] = []
    systems: list[SystemResult] = []
    try:
        for repeat in range(settings.repeats):
            for model in models:
                print(f"repeat {repeat + 1}/{settings.repeats}, {model.description}", flush=True)
                raw.append(
                    {
                        "model": model.key,
                        "repeat": repeat,
                        **measure_raw(
                            model, settings.raw_seconds, settings.raw_batch_sizes, uploads_directory
                        ),
                    }
                )
                for spec in rotated(specs, repeat):
                    print(f"  {spec.description}", flush=True)
                    log_directory = results_folder / "logs" / f"{model.key}-{spec.key}-{repeat}"
                    system = (
                        start_stack(spec, model, workspace, log_directory)
                        if spec.is_stack
                        else start_baseline(model, log_directory)
                    )
                    try:
                        systems.append(measure_system(system, spec, model, repeat, uploads, settings))
                    finally:
                        system.stop()
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return {
        "raw": raw,
        "systems": [result.to_dict() for result in systems],
        "models": [
            {
                "key": model.key,
                "description": model.description,
                "version_dir": display_path(model.version_dir),
                "keras_model": display_path(model.keras_model) if model.keras_model else None,
                "variant": model.variant,
                "backbone": model.card.get("backbone"),
            }
            for model in models
        ],
        "systems_measured": [{"key": spec.key, "description": spec.description} for spec in specs],
    }


# ---------------------------------------------------------------- the report


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.median(finite), min(finite), max(finite)


def cell(values: Sequence[float], digits: int = 1) -> str:
    median, low, high = median_range(values)
    if math.isnan(median):
        return "n/a"
    if len(values) == 1 or low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def render_report(results: dict[str, Any], settings: BenchmarkSettings, command_line: str) -> str:
    raw_by_model: dict[str, list[dict[str, Any]]] = {}
    for entry in results["raw"]:
        raw_by_model.setdefault(entry["model"], []).append(entry)
    by_model_system: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in results["systems"]:
        by_model_system.setdefault((entry["model"], entry["system"]), []).append(entry)
    descriptions = {item["key"]: item["description"] for item in results["systems_measured"]}
    others = [
        step["other_load"]["share_of_machine"]
        for entry in results["systems"]
        for step in [entry["saturation"], *entry["rate_steps"]]
        if step.get("other_load")
    ] + [entry["other_load"]["share_of_machine"] for entry in results["raw"]]
    other_median, _, other_max = median_range(others)
    busiest = busiest_other_commands(results)
    provisional = not math.isnan(other_median) and other_median > QUIET_MACHINE_SHARE
    machine = results["machine"]
    lines = [
        BEGIN_MARKER,
        "",
        f"_Generated by `python -m loadtest.benchmark` on {results['written_at']}, "
        f"code `{results['code_version']}`;_",
        f"_machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}. Reproduce: `{command_line}`._",
        "",
        f"Settings: {settings.repeats} repeats (systems in rotating order), steps of "
        f"{settings.step_seconds:.0f} s, saturation with {settings.concurrency} clients sending back to "
        f"back, {settings.search_steps} bisection steps of Poisson arrivals for the highest rate with "
        f"p95 ≤ {settings.p95_target_ms:.0f} ms and no failure. Cells: median over repeats (min–max). "
        "Requests are single-image uploads of the real files in `../shared/data/uploads` (JPEG, PNG, "
        "WebP, 20 KB–2.5 MB); the load generator runs on the same cores.",
        "",
    ]
    if provisional:
        lines += [
            f"> **Provisional**: other processes used a median {other_median:.0%} (max "
            f"{other_max:.0%}) of the CPU during the measurements (busiest, on average over the steps: "
            f"{busiest}). Re-run on a quiet machine before quoting these numbers.",
            "",
        ]
    else:
        lines += [f"Other processes used a median {other_median:.0%} of the CPU during the measurements.", ""]
    for model in results["models"]:
        key = model["key"]
        raws = raw_by_model.get(key, [])
        ceiling = [entry["best_images_per_second"] for entry in raws]
        ceiling_by_repeat = {entry["repeat"]: entry["best_images_per_second"] for entry in raws}
        lines += [
            f"### {model['description']}",
            "",
            f"`{model['version_dir']}`, export variant `{model['variant']}`; "
            f"baseline loads `{model['keras_model']}`.",
            "",
            "| system | highest rate with p95 ≤ target (req/s) | p95 there (ms) "
            "| saturation throughput (req/s) | p95 at saturation (ms) | saturation ÷ raw ceiling |",
            "|---|---|---|---|---|---|",
            f"| raw SavedModel in process, best batch size (img/s) | | | {cell(ceiling)} | | 1.00 |",
        ]
        rates: dict[str, list[float]] = {}
        for spec_key, description in descriptions.items():
            entries = by_model_system.get((key, spec_key), [])
            if not entries:
                continue
            rates[spec_key] = [entry["max_rate_within_target"] for entry in entries]
            best_p95 = [best_step_p95(entry) for entry in entries]
            saturation = [entry["saturation"]["throughput"] or 0.0 for entry in entries]
            saturation_p95 = [entry["saturation"]["p95_ms"] or math.nan for entry in entries]
            ratio = [
                (entry["saturation"]["throughput"] or 0.0) / ceiling_by_repeat[entry["repeat"]]
                for entry in entries
                if ceiling_by_repeat.get(entry["repeat"])
            ]
            rate_cell, p95_cell = cell(rates[spec_key]), cell(best_p95, 0)
            if not any(rates[spec_key]):
                # Within target at no rate tried: say how close the slowest rate came.
                lowest = min((lowest_rate_step(entry) for entry in entries), key=lambda step: step["p95_ms"])
                rate_cell = "none"
                p95_cell = f"{lowest['p95_ms']:.0f} at {lowest['offered_rate']:.2f} req/s (lowest rate tried)"
            lines.append(
                f"| {description} | {rate_cell} | {p95_cell} | {cell(saturation)} "
                f"| {cell(saturation_p95, 0)} | {cell(ratio, 2)} |"
            )
        lines.append("")
        lines += goal_lines(key, by_model_system, ceiling_by_repeat, rates)
        lines += raw_table(raws, settings.raw_batch_sizes)
        lines += stage_table(key, by_model_system, descriptions)
    lines += [
        "Raw numbers of every step (offered rate, latencies, errors, other processes' CPU, stage means): "
        f"`{results.get('results_folder', 'results/benchmark/<timestamp>')}/benchmark.json` (not committed; "
        "`--from-json` rewrites this section from it).",
        "",
        END_MARKER,
    ]
    return "\n".join(lines)


def lowest_rate_step(entry: dict[str, Any]) -> dict[str, Any]:
    measured_steps = [step for step in entry["rate_steps"] if step["p95_ms"] is not None]
    if not measured_steps:
        return {"p95_ms": math.inf, "offered_rate": 0.0}
    step: dict[str, Any] = min(measured_steps, key=lambda item: item["offered_rate"])
    return step


def busiest_other_commands(results: dict[str, Any], count: int = 3) -> str:
    """The other processes that took the most CPU, as their mean share over all measurement steps."""
    loads = [entry["other_load"] for entry in results["raw"]] + [
        step["other_load"]
        for entry in results["systems"]
        for step in [entry["saturation"], *entry["rate_steps"]]
        if step.get("other_load")
    ]
    totals: dict[str, float] = {}
    for load in loads:
        for item in load.get("busiest", []):
            totals[item["command"]] = totals.get(item["command"], 0.0) + item["share"]
    top = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:count]
    return ", ".join(f"`{command}` {share / max(len(loads), 1):.0%}" for command, share in top) or "unknown"


def best_step_p95(entry: dict[str, Any]) -> float:
    passing = [step for step in entry["rate_steps"] if step["within_target"]]
    if not passing:
        return math.nan
    return float(max(passing, key=lambda step: step["offered_rate"])["p95_ms"])


def goal_lines(
    key: str,
    by_model_system: dict[tuple[str, str], list[dict[str, Any]]],
    ceiling_by_repeat: dict[int, float],
    rates: dict[str, list[float]],
) -> list[str]:
    lines = []
    stack_entries = by_model_system.get((key, "stack"), [])
    ratios = [
        (entry["saturation"]["throughput"] or 0.0) / ceiling_by_repeat[entry["repeat"]]
        for entry in stack_entries
        if ceiling_by_repeat.get(entry["repeat"])
    ]
    if ratios:
        median = statistics.median(ratios)
        verdict = "met" if median >= CEILING_RATIO_GOAL else "**not met**"
        lines.append(
            f"- Stack saturation ÷ raw ceiling: **{median:.2f}** (goal ≥ {CEILING_RATIO_GOAL}): {verdict}."
        )
    stack_rates = {entry["repeat"]: entry["max_rate_within_target"] for entry in stack_entries}
    baselines = {entry["repeat"]: entry for entry in by_model_system.get((key, BASELINE), [])}
    paired = [(stack_rates[repeat], baselines[repeat]) for repeat in stack_rates if repeat in baselines]
    if paired:
        lines.append(baseline_goal_line(paired))
    return [*lines, ""] if lines else []


def baseline_goal_line(paired: list[tuple[float, dict[str, Any]]]) -> str:
    """Stack rate ÷ baseline rate within the target, per repeat, median. When the baseline met the target
    at no rate tried, its rate is below the lowest rate tried: the ratio is then only a lower bound."""
    ours = statistics.median(rate for rate, _ in paired)
    exact = [
        rate / base["max_rate_within_target"] for rate, base in paired if base["max_rate_within_target"] > 0
    ]
    if len(exact) == len(paired):
        ratio = statistics.median(exact)
        theirs = statistics.median(base["max_rate_within_target"] for _, base in paired)
        verdict = "met" if ratio >= BASELINE_RATIO_GOAL else "**not met**"
        return (
            f"- Rate within the p95 target, stack ÷ baseline: **{ratio:.1f}x** ({ours:.1f} vs {theirs:.1f} "
            f"req/s; goal ≥ {BASELINE_RATIO_GOAL:.0f}x): {verdict}."
        )
    if ours <= 0:
        return "- Neither the stack nor the baseline met the p95 target at any rate tried: not comparable."
    lowest = statistics.median(lowest_rate_step(base)["offered_rate"] for _, base in paired)
    bound = ours / lowest if lowest > 0 else math.inf
    verdict = "met" if bound >= BASELINE_RATIO_GOAL else "undetermined (the bound is below the goal)"
    return (
        f"- Rate within the p95 target, stack ÷ baseline: the baseline met the target at no rate tried in "
        f"{len(paired) - len(exact)} of {len(paired)} repeats (not even at {lowest:.2f} req/s), the stack at "
        f"{ours:.1f} req/s: the ratio is at least **{bound:.1f}x** "
        f"(goal ≥ {BASELINE_RATIO_GOAL:.0f}x): {verdict}."
    )


def raw_table(raws: list[dict[str, Any]], batch_sizes: list[int]) -> list[str]:
    if not raws:
        return []
    header = "| raw SavedModel, batch size | " + " | ".join(str(size) for size in batch_sizes) + " |"
    rates = " | ".join(
        cell([entry["batch_sizes"][str(size)]["images_per_second"] for entry in raws]) for size in batch_sizes
    )
    times = " | ".join(
        cell([entry["batch_sizes"][str(size)]["milliseconds_per_batch"] for entry in raws], 0)
        for size in batch_sizes
    )
    return [
        header,
        "|---|" + "---|" * len(batch_sizes),
        f"| images/s | {rates} |",
        f"| ms per batch | {times} |",
        "",
    ]


STAGE_ROWS = (
    ("read", "read the upload (gateway)"),
    ("decode", "decode (Pillow, gateway)"),
    ("resize", "crop + resize (gateway)"),
    ("grpc_and_transport", "gRPC + transport (model_call − server time)"),
    ("server_queue", "queue for a batch (model server)"),
    ("server_runtime_per_batch", "model run, per batch (model server)"),
    ("server_overhead", "rest of the server's Predict"),
    ("gateway_other", "rest of the gateway: waiting for a decode thread, routing, JSON"),
    ("gateway_total", "gateway total"),
    ("mean_batch_size", "mean batch size (requests per model run)"),
)


def stage_table(
    key: str, by_model_system: dict[tuple[str, str], list[dict[str, Any]]], descriptions: dict[str, str]
) -> list[str]:
    columns: list[tuple[str, list[dict[str, Any]]]] = []
    for spec_key, description in descriptions.items():
        if spec_key == BASELINE:
            continue
        entries = by_model_system.get((key, spec_key), [])
        at_target = [best_stages(entry) for entry in entries]
        at_saturation = [entry["saturation"]["stages_ms"] for entry in entries]
        short = (
            "no batching"
            if spec_key == NO_BATCHING
            else description.split("`")[1]
            if "`" in description
            else spec_key
        )
        columns.append((f"{short}, at the highest rate within target", [item for item in at_target if item]))
        columns.append((f"{short}, at saturation", [item for item in at_saturation if item]))
    if not any(values for _, values in columns):
        return []
    lines = [
        "Where the time goes (mean ms per request, from the services' own histograms):",
        "",
        "| stage | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for stage, label in STAGE_ROWS:
        digits = 2 if stage == "mean_batch_size" else 1
        lines.append(
            f"| {label} | "
            + " | ".join(cell([item[stage] for item in values], digits) for _, values in columns)
            + " |"
        )
    return [*lines, ""]


def best_stages(entry: dict[str, Any]) -> dict[str, Any] | None:
    passing = [step for step in entry["rate_steps"] if step["within_target"] and step.get("stages_ms")]
    if not passing:
        return None
    stages_ms: dict[str, Any] = max(passing, key=lambda step: step["offered_rate"])["stages_ms"]
    return stages_ms


def write_into(document: Path, section: str, begin: str = BEGIN_MARKER, end: str = END_MARKER) -> None:
    """Replace the text between the markers of `document` (or append the section when it has none)."""
    text = document.read_text() if document.is_file() else ""
    if begin in text and end in text:
        before = text.split(begin, 1)[0]
        after = text.split(end, 1)[1]
        text = before + section + after
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + section + "\n"
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(text)


# ---------------------------------------------------------------- command line


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models", nargs="+", choices=("resnet50", "starter"), default=["resnet50", "starter"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=20.0, help="length of each measurement step")
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the saturation step")
    parser.add_argument("--search-steps", type=int, default=5, help="bisection steps on the arrival rate")
    parser.add_argument("--p95-target-ms", type=float, default=P95_TARGET_MILLISECONDS)
    parser.add_argument("--raw-seconds", type=float, default=6.0, help="per batch size, in process")
    parser.add_argument("--raw-batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument(
        "--batching-configs",
        type=Path,
        nargs="+",
        default=[DEFAULT_BATCHING_FILE],
        help="one stack per file (the first is 'the stack'); plus one without batching",
    )
    parser.add_argument("--no-unbatched", action="store_true", help="skip the stack without batching")
    parser.add_argument(
        "--resnet50-variant",
        default="folded",
        help="export variant of the ResNet50 model (default: folded, what the starter model serves; "
        "auto measures every variant first, XLA ones included, which takes long on this CPU)",
    )
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models", help="where the starter is")
    parser.add_argument(
        "--starter-keras", type=Path, help="the starter's model.keras (default: its card's run)"
    )
    parser.add_argument("--uploads", type=Path, default=UPLOADS_DIRECTORY)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "results" / "benchmark")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write into")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: write the section from an earlier run's benchmark.json",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = BenchmarkSettings(
        repeats=arguments.repeats,
        step_seconds=arguments.step_seconds,
        warmup_seconds=arguments.warmup_seconds,
        concurrency=arguments.concurrency,
        search_steps=arguments.search_steps,
        p95_target_ms=arguments.p95_target_ms,
        raw_seconds=arguments.raw_seconds,
        raw_batch_sizes=arguments.raw_batch_sizes,
    )
    if arguments.from_json is not None:
        results = json.loads(arguments.from_json.read_text())
        section = render_report(results, BenchmarkSettings(**results["settings"]), results["command_line"])
        write_into(arguments.output, section)
        print(f"written into {arguments.output} from {arguments.from_json}")
        return 0
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_folder = arguments.work_dir / stamp
    results_folder.mkdir(parents=True, exist_ok=True)
    try:
        models = []
        for key in arguments.models:
            print(f"preparing {key} ...", flush=True)
            if key == "resnet50":
                models.append(
                    prepare_resnet50(
                        arguments.work_dir, arguments.resnet50_variant, results_folder / "prepare.log"
                    )
                )
            else:
                models.append(find_starter(arguments.models_dir, keras_model=arguments.starter_keras))
        specs = system_specs(arguments.batching_configs, include_no_batching=not arguments.no_unbatched)
        results = run_benchmark(models, specs, settings, arguments.uploads, results_folder)
    except (BenchmarkModelError, BenchmarkError, StackError) as error:
        print(f"benchmark: {error}", file=sys.stderr)
        return 1
    except StopRequestedError as stop:
        print(f"benchmark: {stop.args[0]}: stopped (its servers are stopped too)", file=sys.stderr)
        return 1
    command_line = "python -m loadtest.benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    results |= {
        "settings": settings.__dict__,
        "command_line": command_line,
        "machine": machine_description(),
        "code_version": code_version(),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    results["results_folder"] = display_path(results_folder)
    (results_folder / "benchmark.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    section = render_report(results, settings, command_line)
    write_into(arguments.output, section)
    print(section)
    print(f"\nwritten into {arguments.output}; raw numbers in {results_folder / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, raise_stop)
    sys.exit(main())
