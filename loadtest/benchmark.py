"""Benchmarks of the whole system, side by side in one run: `python -m loadtest.benchmark --help`.

    python -m loadtest.benchmark systems [--models resnet50,starter] [--repeats 3] [--step-seconds 20]
    python -m loadtest.benchmark cpu-budget [--models resnet50,starter] [--repeats 3] [--seconds 20]

For each model (ResNet50 with a random base and a trained head, and the starter model) and each
repeat, measured one after another on the same machine with the same uploads (../shared/data/uploads):

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

import datetime
import json
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
from typing import Annotated, Any

import numpy as np
import typer

from common import model_config
from common.machine import OtherLoadMonitor, machine_description
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
from common.repository import CPU_SESSION_CONFIG_FILE, DEFAULT_BATCHING_FILE, REPO_ROOT, code_version
from loadtest import generator, precision, stages
from loadtest.benchmark_models import (
    DATA_DIRECTORY,
    BenchmarkModel,
    BenchmarkModelError,
    find_starter,
    prepare_resnet50,
    write_resnet50_run,
)
from loadtest.benchmark_report import (
    BASELINE,
    NO_BATCHING,
    render_report,
    write_into,
)
from loadtest.generator import StepResult
from loadtest.samples import MultipartUpload, load_uploads, model_inputs, multipart_upload
from loadtest.settings import P95_TARGET_MILLISECONDS, UPLOADS_DIRECTORY
from loadtest.stack import LocalStack, StackError

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "performance.md"
START_TIMEOUT_SECONDS = 600.0


class BenchmarkError(RuntimeError):
    """The benchmark cannot run; the message says why."""


# ---------------------------------------------------------------- systems under test


@dataclass(frozen=True)
class SystemSpec:
    key: str
    description: str
    batching_file: Path | None = None
    session_config: Path | None = None  # TF Serving's --tensorflow_session_config_file

    @property
    def is_stack(self) -> bool:
        return self.key != BASELINE


def system_specs(
    batching_files: Sequence[Path],
    include_no_batching: bool,
    session_configs: Sequence[Path] = (),
    include_baseline: bool = True,
) -> list[SystemSpec]:
    specs = []
    for index, batching_file in enumerate(batching_files):
        key = "stack" if index == 0 else f"stack-{batching_file.stem}"
        specs.append(
            SystemSpec(
                key, f"gateway + model server, batching `{display_path(batching_file)}`", batching_file
            )
        )
    for session_config in session_configs:
        specs.append(
            SystemSpec(
                f"stack-{session_config.stem}",
                f"{specs[0].description}, session config `{display_path(session_config)}`",
                specs[0].batching_file,
                session_config,
            )
        )
    if include_no_batching:
        specs.append(SystemSpec(NO_BATCHING, "gateway + model server, no server-side batching"))
    if include_baseline:
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
    stack = LocalStack(
        models,
        config_file,
        log_directory,
        batching_file=spec.batching_file,
        session_config_file=spec.session_config,
    )
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
) -> dict[str, Any]:
    """The raw ceilings in a child process."""
    command = [
        sys.executable,
        "-m",
        "loadtest.benchmark",
        "raw",
        str(model.version_dir),
        f"--seconds={seconds}",
        f"--uploads={uploads_directory}",
        f"--batch-sizes={','.join(str(size) for size in batch_sizes)}",
    ]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
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


# ---------------------------------------------------------------- command line

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)

ModelKeys = Annotated[str, typer.Option("--models", help="comma-separated: resnet50, starter")]
Resnet50Variant = Annotated[
    str,
    typer.Option(
        help="export variant of the ResNet50 model (folded: what the starter model serves; "
        "auto measures every variant first)"
    ),
]
ModelsDir = Annotated[Path, typer.Option(help="where the starter model is")]
Uploads = Annotated[Path, typer.Option(help="upload samples folder")]
WorkDir = Annotated[Path, typer.Option(help="prepared models and results/<stamp>/")]
Output = Annotated[Path, typer.Option(help="markdown file to write the section into")]


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def prepare_models(
    keys: list[str], work_dir: Path, resnet50_variant: str, models_dir: Path, log_path: Path,
    starter_keras: Path | None = None, require_keras_model: bool = True,
) -> list[BenchmarkModel]:  # fmt: skip
    unknown = sorted(set(keys) - {"resnet50", "starter"})
    if unknown or not keys:
        raise BenchmarkError(f"--models are some of resnet50, starter; got {keys}")
    models = []
    for key in keys:
        print(f"preparing {key} ...", flush=True)
        if key == "resnet50":
            models.append(prepare_resnet50(work_dir, resnet50_variant, log_path))
        else:
            models.append(
                find_starter(models_dir, keras_model=starter_keras, require_keras_model=require_keras_model)
            )
    return models


def new_results_folder(work_dir: Path) -> Path:
    folder = work_dir / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def given_options(context: typer.Context) -> str:
    """The options given on the command line, for the report's "generated by" line."""
    return " ".join(
        f"--{name.replace('_', '-')}={value}"
        for name, value in context.params.items()
        # By name: Typer's own (vendored) click has its own ParameterSource enum.
        if getattr(context.get_parameter_source(name), "name", None) == "COMMANDLINE"
    )


def run_or_exit(name: str, measure: Callable[[], Any]) -> Any:
    """Run a measurement; its errors become a message and exit code 1 (servers stopped on the way)."""
    try:
        return measure()
    except (BenchmarkModelError, BenchmarkError, StackError) as error:
        print(f"{name}: {error}", file=sys.stderr)
    except StopRequestedError as stop:
        print(f"{name}: {stop.args[0]}: stopped (its servers are stopped too)", file=sys.stderr)
    raise typer.Exit(1)


@app.command()
def systems(
    context: typer.Context,
    models: ModelKeys = "resnet50,starter",
    repeats: int = 3,
    step_seconds: Annotated[float, typer.Option(help="length of each measurement step")] = 20.0,
    warmup_seconds: float = 5.0,
    concurrency: Annotated[int, typer.Option(help="clients of the saturation step")] = 16,
    search_steps: Annotated[int, typer.Option(help="bisection steps on the arrival rate")] = 5,
    p95_target_ms: float = P95_TARGET_MILLISECONDS,
    raw_seconds: Annotated[float, typer.Option(help="per batch size, in process")] = 6.0,
    raw_batch_sizes: Annotated[str, typer.Option(help="comma-separated")] = "1,4,8,16,32",
    batching_configs: Annotated[
        str, typer.Option(help="comma-separated; one stack per file (the first is 'the stack')")
    ] = str(DEFAULT_BATCHING_FILE),
    no_unbatched: Annotated[bool, typer.Option(help="skip the stack without batching")] = False,
    no_baseline: Annotated[bool, typer.Option(help="skip the baseline (needs no Keras model)")] = False,
    session_configs: Annotated[
        str, typer.Option(help="comma-separated; one more stack (first batching file) per session config")
    ] = "",
    resnet50_variant: Resnet50Variant = "folded",
    models_dir: ModelsDir = REPO_ROOT / "models",
    starter_keras: Annotated[
        Path | None, typer.Option(help="the starter's model.keras (default: its card's run)")
    ] = None,
    uploads: Uploads = UPLOADS_DIRECTORY,
    work_dir: WorkDir = REPO_ROOT / "results" / "benchmark",
    output: Output = DEFAULT_OUTPUT,
    from_json: Annotated[
        Path | None, typer.Option(help="measure nothing: write the section from an earlier benchmark.json")
    ] = None,
) -> None:
    """Raw ceiling, the stack (batching on and off) and the baseline, side by side (about an hour)."""
    if from_json is not None:
        results = json.loads(from_json.read_text())
        section = render_report(results, BenchmarkSettings(**results["settings"]), results["command_line"])
        write_into(output, section)
        print(f"written into {output} from {from_json}")
        return
    settings = BenchmarkSettings(
        repeats, step_seconds, warmup_seconds, concurrency, search_steps, p95_target_ms, raw_seconds,
        [int(size) for size in split_list(raw_batch_sizes)],
    )  # fmt: skip
    results_folder = new_results_folder(work_dir)
    specs = system_specs(
        [Path(file) for file in split_list(batching_configs)],
        not no_unbatched,
        [Path(file) for file in split_list(session_configs)],
        include_baseline=not no_baseline,
    )
    results = run_or_exit(
        "benchmark",
        lambda: run_benchmark(
            prepare_models(split_list(models), work_dir, resnet50_variant, models_dir,
                           results_folder / "prepare.log", starter_keras, not no_baseline),
            specs, settings, uploads, results_folder,
        ),
    )  # fmt: skip
    command_line = f"python -m loadtest.benchmark systems {given_options(context)}".strip()
    results |= {
        "settings": settings.__dict__,
        "command_line": command_line,
        "machine": machine_description(),
        "code_version": code_version(),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "results_folder": display_path(results_folder),
    }
    (results_folder / "benchmark.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    section = render_report(results, settings, command_line)
    write_into(output, section)
    print(section)
    print(f"\nwritten into {output}; raw numbers in {results_folder / 'benchmark.json'}")


@app.command("cpu-budget")
def cpu_budget_command(
    models: ModelKeys = "resnet50,starter",
    repeats: Annotated[int, typer.Option(help="raw model + fresh stack, each time")] = 3,
    seconds: Annotated[float, typer.Option(help="closed-loop time per row")] = 20.0,
    concurrency: int = 16,
    raw_seconds: Annotated[float, typer.Option(help="per batch size, in process")] = 6.0,
    resnet50_variant: Resnet50Variant = "folded",
    models_dir: ModelsDir = REPO_ROOT / "models",
    uploads: Uploads = UPLOADS_DIRECTORY,
    work_dir: WorkDir = REPO_ROOT / "results" / "benchmark",
    output: Output = DEFAULT_OUTPUT,
) -> None:
    """Core-milliseconds per request, process by process, at saturation (about 12 minutes)."""
    from loadtest import cpu_budget

    results_folder = new_results_folder(work_dir)
    settings = cpu_budget.BudgetSettings(repeats, seconds, concurrency, raw_seconds)
    run_or_exit(
        "cpu-budget",
        lambda: cpu_budget.run_budget(
            prepare_models(split_list(models), work_dir, resnet50_variant, models_dir,
                           results_folder / "prepare.log", require_keras_model=False),
            settings, uploads, results_folder, output,
        ),
    )  # fmt: skip


@app.command("provenance")
def provenance_cost(
    rounds: Annotated[int, typer.Option(help="A B pairs per concurrency")] = 5,
    seconds: Annotated[float, typer.Option(help="closed-loop time of each step")] = 15.0,
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts")] = "1,8",
    models_dir: ModelsDir = REPO_ROOT / "models",
    uploads: Uploads = UPLOADS_DIRECTORY,
    work_dir: WorkDir = REPO_ROOT / "results" / "benchmark",
) -> None:
    """What reading provenance adds to POST /predict (about 6 minutes): the starter model behind two
    gateways, read_provenance on and off, steps alternating; p50/p95 of each and their ratios."""
    results_folder = new_results_folder(work_dir)
    samples = load_uploads(uploads)
    bodies = [multipart_upload(sample) for sample in samples]

    def measure() -> dict[str, Any]:
        model = find_starter(models_dir, require_keras_model=False)
        models, config_file = model_workspace(model, results_folder / "workspace")
        stacks = {
            setting: LocalStack(
                models,
                config_file,
                results_folder / "logs" / setting,
                gateway_settings={"read_provenance": setting},
            )
            for setting in ("true", "false")
        }
        steps: list[dict[str, Any]] = []
        try:
            for stack in stacks.values():
                stack.start(START_TIMEOUT_SECONDS)
                generator.closed_loop(stack.gateway_url, bodies, 2, 5.0, seed=0)  # warm-up, discarded
            for clients in (int(count) for count in split_list(concurrency)):
                for index in range(rounds):
                    order = ("true", "false") if index % 2 == 0 else ("false", "true")
                    for setting in order:
                        step = generator.closed_loop(
                            stacks[setting].gateway_url, bodies, clients, seconds, index
                        )
                        steps.append(
                            {"read_provenance": setting, "clients": clients, "round": index} | step.to_dict()
                        )
                        print(f"  {clients} clients, read_provenance={setting}: p50 {step.p50_ms:.1f} ms, "
                              f"p95 {step.p95_ms:.1f} ms, failed {step.failed}", flush=True)  # fmt: skip
        finally:
            for stack in stacks.values():
                stack.stop()
            shutil.rmtree(results_folder / "workspace", ignore_errors=True)
        return {"model": model.description, "steps": steps}

    results = run_or_exit("provenance", measure)
    lines = [
        "| clients | p50 off -> on (ms) | p95 off -> on (ms) | p50 ratio on/off | p95 ratio on/off |",
        "|---|---|---|---|---|",
    ]
    for clients in sorted({step["clients"] for step in results["steps"]}):
        pairs = [
            [step for step in results["steps"] if step["clients"] == clients and step["round"] == index]
            for index in range(rounds)
        ]
        on = [next(s for s in pair if s["read_provenance"] == "true") for pair in pairs]
        off = [next(s for s in pair if s["read_provenance"] == "false") for pair in pairs]
        row = [f"| {clients} "]
        for key in ("p50_ms", "p95_ms"):
            before, after = (statistics.median(step[key] for step in side) for side in (off, on))
            row.append(f"| {before:.1f} -> {after:.1f} ")
        for key in ("p50_ms", "p95_ms"):
            ratios = [a[key] / b[key] for a, b in zip(on, off, strict=True)]
            row.append(f"| {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) ")
        lines.append("".join(row) + "|")
    results |= {"machine": machine_description(), "code_version": code_version(), "table": lines}
    (results_folder / "provenance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n".join(lines))
    print(f"\nraw numbers in {results_folder / 'provenance.json'}")


@app.command("mixed-precision")
def mixed_precision(
    context: typer.Context,
    session_config: Annotated[
        Path, typer.Option(help="TF Serving --tensorflow_session_config_file to check against fp32")
    ] = CPU_SESSION_CONFIG_FILE,
    model_keys: ModelKeys = "resnet50,starter",
    models_dir: ModelsDir = REPO_ROOT / "models",
    data: Annotated[Path, typer.Option(help="labelled data set (manifest and splits)")] = DATA_DIRECTORY,
    uploads: Uploads = UPLOADS_DIRECTORY,
    work_dir: WorkDir = REPO_ROOT / "results" / "benchmark",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated, for the speed pairs")] = "1,4,8,16,32",
    pairs: Annotated[int, typer.Option(help="A B pairs per batch size")] = 4,
    limit: Annotated[int | None, typer.Option(help="images per source, label and split (smoke runs)")] = None,
    output: Output = REPO_ROOT / "docs" / "performance.md",
) -> None:
    """May a model be served under a session config's mixed precision? Accuracy, ROC-AUC and label
    flips against fp32 on the validation and test splits and the LOSO images, through the local
    server's runtime; speed per batch size side by side (about 10 minutes for both models here).
    Exit 1 when a model is refused."""
    from training.evaluate import load_images

    results_folder = new_results_folder(work_dir)
    examples = precision.evaluation_sets(data, limit)
    print("decoding " + ", ".join(f"{len(chosen)} {name}" for name, chosen in examples.items()), flush=True)
    sets = {
        name: (load_images(chosen), np.asarray([example.label for example in chosen]))
        for name, chosen in examples.items()
    }
    speed_images = model_inputs(load_uploads(uploads))
    models = prepare_models(split_list(model_keys), work_dir, "folded", models_dir,
                            results_folder / "prepare.log", require_keras_model=False)  # fmt: skip
    monitor = OtherLoadMonitor().start()
    checked = []
    for model in models:
        print(f"{model.description}: {model.version_dir} under {display_path(session_config)}", flush=True)
        result = precision.check_model(
            model.version_dir, session_config, sets, speed_images,
            [int(size) for size in split_list(batch_sizes)], pairs, precision.PrecisionRule(),
        )  # fmt: skip
        checked.append(result | {"description": model.description})
    other_load = monitor.stop()
    options = given_options(context)
    results: dict[str, Any] = {"models": checked, "other_load": other_load.to_dict(), "command": options,
                               "machine": machine_description(), "code_version": code_version()}  # fmt: skip
    (results_folder / "mixed-precision.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = precision.markdown(results)
    print("\n".join(lines) + f"\n\nraw numbers in {results_folder / 'mixed-precision.json'}")
    command = f"python -m loadtest.benchmark mixed-precision {options}".strip()
    stamp = f"_Measured by `{command}` at {results_folder.name}, code `{results['code_version']}`; "
    stamp += f"{other_load.describe()}._"
    section = "\n".join([precision.BEGIN_MARKER, "", stamp, "", *lines, "", precision.END_MARKER])
    write_into(output, section, precision.BEGIN_MARKER, precision.END_MARKER)
    if any(model["verdict"] == "refused" for model in checked):
        raise typer.Exit(1)


@app.command(hidden=True)
def raw(
    version_dir: Annotated[Path, typer.Argument(help="a SavedModel version folder")],
    batch_sizes: Annotated[str, typer.Option(help="comma-separated")] = "1,4,8,16,32",
    seconds: Annotated[float, typer.Option(help="per batch size, all rounds together")] = 4.0,
    rounds: int = 3,
    uploads: Uploads = UPLOADS_DIRECTORY,
) -> None:
    """(A child process of the two above) the raw ceiling as JSON on stdout: loadtest/raw_model.py."""
    from loadtest import raw_model

    samples = load_uploads(uploads)
    sizes = [int(size) for size in split_list(batch_sizes)]
    files = [sample.data for sample in samples]
    print(json.dumps(raw_model.measure(version_dir, model_inputs(samples), sizes, seconds, rounds, files)))


@app.command("resnet50-run", hidden=True)
def resnet50_run(run_dir: Path, data: Path = DATA_DIRECTORY) -> None:
    """(A child process of the model preparation) write the ResNet50 run (random base, trained head)."""
    write_resnet50_run(run_dir, data)
    print(f"wrote {run_dir}")


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, raise_stop)
    app(prog_name="python -m loadtest.benchmark")
