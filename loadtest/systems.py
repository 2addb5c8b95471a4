"""The systems benchmark's harness: each system under test started, measured and stopped, in turn.

For each model (ResNet50 with a random base and a fitted head, and the starter model) and each
repeat, measured one after another on the same machine with the same uploads (../shared/data/uploads):

1. raw ceiling: the exported SavedModel called in process at batch sizes 1..32 (best img/s), in a
   child process (`python -m loadtest.benchmark raw`, loadtest/raw_model.py);
2. each system under test, started fresh on free loopback ports:
   - the stack: gateway + local model server with serving/batching.cpu.config (and any other
     batching or session config asked for), and the same stack with server-side batching off;
   - the baseline: the original design (loadtest/baseline_app.py: FastAPI + Keras model.predict
     per request, in one process);
   and for each: the saturation throughput (closed loop, `concurrency` clients back to back),
   then the highest Poisson arrival rate whose p95 stays within the target (200 ms) with no
   failed request, found by bisection between 0 and the saturation throughput;
3. for the stack, where the time goes: the gateway's and the model server's own Prometheus
   histograms scraped around each step (loadtest/stages.py).

The order of the systems rotates between repeats. loadtest/benchmark_report.py turns the results
into tables; loadtest/benchmark.py is the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import model_config
from common.model_config import DEFAULT_MODEL_NAME, STABLE_LABEL
from common.processes import LOOPBACK, ManagedProcess, ProcessExitedError, answers_200, free_port, wait_until
from common.repository import REPO_ROOT
from loadtest import generator, stages
from loadtest.benchmark_models import BenchmarkModel
from loadtest.benchmark_report import BASELINE, NO_BATCHING
from loadtest.generator import StepResult
from loadtest.samples import MultipartUpload, load_uploads, multipart_upload
from loadtest.settings import P95_TARGET_MILLISECONDS
from loadtest.stack import LocalStack, StackError

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
