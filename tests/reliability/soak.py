"""`make soak`: the stack under steady load for a long time, with the real model and real uploads.

    python -m tests.reliability.soak [--minutes 10] [--rate REQUESTS_PER_SECOND]

1. Starts the local model server (serving/batching.cpu.config, the exported model in models/,
   or one exported now from --run when models/ has none) and the gateway, as `make run` does.
2. Finds the saturation rate: closed-loop load at a few concurrencies over the real uploads of
   ../shared/data/uploads (mixed sizes and formats); the best throughput is saturation.
   (--rate skips this, e.g. with the figure of docs/performance.md.)
3. Soaks at half of it, open loop (one request every 1/rate s whatever the answers), for
   --minutes; samples the resident memory of both processes and the CPU share of every other
   process on the machine (the CPU is shared) every few seconds.
4. Writes results/reliability/soak-<time>.json and prints a summary; exits 1 unless there were
   zero errors, p95 < --p95-limit-ms and neither process's memory grew past --rss-growth-limit-mib.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from common import model_versions
from common.repository import REPO_ROOT, SHARED_UPLOADS
from tests.reliability.load import BackgroundLoad, Outcome, Upload, latency_summary
from tests.reliability.stack import MEBIBYTE, Stack, build_stack, running, stable_label_config

CONTENT_TYPES = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
MODEL_NAME = "ai_detector"
SAMPLE_SECONDS = 5.0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument(
        "--rate", type=float, help="requests per second; default: half the measured saturation"
    )
    parser.add_argument("--saturation-seconds", type=float, default=40.0, help="per concurrency step")
    parser.add_argument("--concurrency-steps", default="2,4,8,16", help="closed-loop users per step")
    parser.add_argument(
        "--models", type=Path, default=REPO_ROOT / "models", help="folder with ai_detector/<n>/"
    )
    parser.add_argument("--run", type=Path, default=REPO_ROOT / "runs" / "efficientnet_lite0",
                        help="training run exported when --models has no version")  # fmt: skip
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "reliability")
    parser.add_argument("--p95-limit-ms", type=float, default=200.0)
    parser.add_argument("--rss-growth-limit-mib", type=float, default=32.0,
                        help="allowed growth between the soak's first and last minute")  # fmt: skip
    return parser.parse_args(argv)


def model_version(models: Path, run: Path, output: Path) -> Path:
    """The newest exported version under models/ai_detector, else one exported now from `run`."""
    versions = list(model_versions.version_folders(models / MODEL_NAME).values())
    if versions:
        return versions[-1]
    exported = output / "models"
    if not (exported / MODEL_NAME / "1").is_dir():
        print(f"no model in {models}; exporting {run} to {exported} (fp32)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "export.export", str(run), f"--models-dir={exported}", "--variant=fp32",
             "--version=1"],
            cwd=REPO_ROOT,
            check=True,
        )  # fmt: skip
    return exported / MODEL_NAME / "1"


def real_uploads() -> list[Upload]:
    return [
        (path.name, path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(SHARED_UPLOADS.iterdir())
        if path.suffix in CONTENT_TYPES
    ]


@dataclass
class MachineSampler:
    """Every SAMPLE_SECONDS: resident memory of the stack's processes, and the CPU share of all
    other processes on the machine (their CPU seconds over wall seconds x cores)."""

    ours: dict[str, int]
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    others_share: list[tuple[float, float]] = field(default_factory=list)  # (time, share of the machine)
    others_by_name: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in self.ours.items()}
        self._excluded = {os.getpid(), *self.ours.values()}
        self._last_cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="machine-sampler", daemon=True)

    def start(self) -> None:
        self._cpu_seconds_of_others()  # baseline
        self._last_time = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _cpu_seconds_of_others(self) -> tuple[float, Counter[str]]:
        total, by_name = 0.0, Counter[str]()
        current: dict[int, float] = {}
        for process in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
            info = process.info
            if info["pid"] in self._excluded or info["cpu_times"] is None:
                continue
            seconds = info["cpu_times"].user + info["cpu_times"].system
            current[info["pid"]] = seconds
            delta = seconds - self._last_cpu.get(info["pid"], seconds)
            if delta > 0:
                total += delta
                command = " ".join((info["cmdline"] or [info["name"] or "?"])[:4])
                by_name[command[:100]] += delta
        self._last_cpu = current
        return total, by_name

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            now = time.monotonic()
            for name, process in self._processes.items():
                self.rss.setdefault(name, []).append((now, int(process.memory_info().rss)))
            seconds, by_name = self._cpu_seconds_of_others()
            self.others_share.append((now, seconds / ((now - self._last_time) * (psutil.cpu_count() or 1))))
            self.others_by_name.update(by_name)
            self._last_time = now


def saturation(stack: Stack, uploads: list[Upload], steps: list[int], seconds: float) -> dict[str, object]:
    """Closed-loop throughput (answers/s, after a warm-up fifth) at each concurrency; the best."""
    results = {}
    for concurrency in steps:
        with BackgroundLoad(stack.gateway_url, uploads, concurrency=concurrency) as load:
            time.sleep(seconds)
        warm = load.outcomes[0].started + seconds / 5
        window = [o for o in load.outcomes if o.started >= warm]
        elapsed = max(o.finished for o in window) - warm if window else seconds
        ok = sum(1 for o in window if o.status == 200)
        results[concurrency] = {
            "throughput_per_second": round(ok / elapsed, 2),
            "errors": sum(1 for o in window if o.status != 200),
            **latency_summary(window),
        }
        print(f"  concurrency {concurrency}: {results[concurrency]}", flush=True)
    best = max(results, key=lambda step: float(results[step]["throughput_per_second"]))
    return {"steps": results, "best_concurrency": best, "rate": results[best]["throughput_per_second"]}


def per_minute(
    outcomes: list[Outcome], others_share: list[tuple[float, float]], start: float
) -> list[dict[str, object]]:
    """Requests, errors, latency and the other processes' CPU share, minute by minute."""
    minutes: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        minutes.setdefault(int((outcome.started - start) // 60), []).append(outcome)
    shares: dict[int, list[float]] = {}
    for moment, share in others_share:
        shares.setdefault(int((moment - start) // 60), []).append(share)
    return [
        {"minute": minute + 1, "requests": len(group), "errors": sum(1 for o in group if o.status != 200),
         **latency_summary(group),
         "other_processes_cpu_percent": round(float(np.mean(shares.get(minute, [0.0]))) * 100, 1)}
        for minute, group in sorted(minutes.items())
    ]  # fmt: skip


def memory_summary(samples: list[tuple[float, int]], start: float) -> dict[str, object]:
    """MiB in the first and last minute of the soak, the growth, and the fitted slope per hour."""
    times = np.array([moment - start for moment, _ in samples])
    values = np.array([rss / MEBIBYTE for _, rss in samples])
    first, last = values[times < 60], values[times > times.max() - 60]
    slope = float(np.polyfit(times, values, 1)[0]) * 3600 if len(values) > 2 else 0.0
    minute_of = (times // 60).astype(int)
    per_minute = [round(float(values[minute_of == minute].mean()), 1) for minute in np.unique(minute_of)]
    return {
        "per_minute_mib": per_minute,
        "first_minute_mib": round(float(first.mean()), 1),
        "last_minute_mib": round(float(last.mean()), 1),
        "growth_mib": round(float(last.mean() - first.mean()), 1),
        "max_mib": round(float(values.max()), 1),
        "slope_mib_per_hour": round(slope, 1),
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    arguments.output.mkdir(parents=True, exist_ok=True)
    version = model_version(arguments.models, arguments.run, arguments.output)
    uploads = real_uploads()
    workspace = Path(tempfile.mkdtemp(prefix="soak-", dir=arguments.output))
    stack = build_stack(
        workspace,
        version,
        stable_label_config(1),
        batching=(REPO_ROOT / "serving" / "batching.cpu.config").read_text(),
    )
    print(f"soak: model {version}, {len(uploads)} real uploads, workspace {workspace}", flush=True)
    with running(stack):
        pids = {"gateway": stack.pid(stack.gateway), "model_server": stack.pid(stack.model_server)}
        steps = [int(step) for step in arguments.concurrency_steps.split(",")]
        measured = None
        if arguments.rate is None:
            print("saturation:", flush=True)
            measured = saturation(stack, uploads, steps, arguments.saturation_seconds)
            rate = float(measured["rate"]) / 2  # type: ignore[arg-type]
        else:
            rate = arguments.rate
        print(f"soak at {rate:.2f} requests/s for {arguments.minutes:g} minutes", flush=True)
        sampler = MachineSampler(pids)
        sampler.start()
        started = time.monotonic()
        with BackgroundLoad(stack.gateway_url, uploads, rate=rate, max_in_flight=64) as load:
            while time.monotonic() - started < arguments.minutes * 60:
                time.sleep(min(60.0, arguments.minutes * 60 - (time.monotonic() - started)))
                done = load.snapshot()
                print(f"  {len(done)} requests, {sum(1 for o in done if o.status != 200)} errors, "
                      f"{latency_summary(done[-int(rate * 60):])}", flush=True)  # fmt: skip
        sampler.stop()
        alive = {
            name: process.running
            for name, process in (("gateway", stack.gateway), ("model_server", stack.model_server))
        }
    outcomes = load.outcomes
    errors = [o for o in outcomes if o.status != 200]
    latency = latency_summary(outcomes)
    memory = {name: memory_summary(samples, started) for name, samples in sampler.rss.items()}
    others = np.array([share for _, share in sampler.others_share]) * 100
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version_dir": str(version),
        "uploads": len(uploads),
        "saturation": measured,
        "rate_per_second": round(rate, 2),
        "minutes": arguments.minutes,
        "requests": len(outcomes),
        "achieved_rate_per_second": round(len(outcomes) / (arguments.minutes * 60), 2),
        "errors": len(errors),
        "error_statuses": dict(Counter(str(o.status or o.transport_error) for o in errors)),
        "skipped_by_the_generator": load.skipped,
        "latency": latency,
        "per_minute": per_minute(outcomes, sampler.others_share, started),
        "rss": memory,
        "processes_alive_at_the_end": alive,
        "other_processes_cpu_percent_of_machine": {
            "mean": round(float(others.mean()), 1) if others.size else None,
            "max": round(float(others.max()), 1) if others.size else None,
            "top": [[name, round(seconds, 1)] for name, seconds in sampler.others_by_name.most_common(5)],
        },
        "cpu_count": psutil.cpu_count(),
    }
    path = arguments.output / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("requests", "errors", "latency", "rss")}, indent=2))
    print(f"other processes: {result['other_processes_cpu_percent_of_machine']}\nwritten to {path}")
    passed = (
        not errors
        and not load.skipped
        and latency.get("p95_ms", float("inf")) < arguments.p95_limit_ms
        and all(
            float(str(summary["growth_mib"])) < arguments.rss_growth_limit_mib for summary in memory.values()
        )
        and all(alive.values())
    )
    print("SOAK PASSED" if passed else "SOAK FAILED", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
