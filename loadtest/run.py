"""Headless load test: `make loadtest` / `python -m loadtest.run --help`.

    python -m loadtest.run --users 10 --spawn-rate 2 --duration 60s            # starts the local stack
    python -m loadtest.run --gateway-url http://127.0.0.1:8000 --model-server-address 127.0.0.1:8500

Runs Locust (loadtest/locustfile.py) headless against the gateway (and the model server's gRPC
API), then judges the run: exit code 0 when no request failed and every p95 is within the limit
(200 ms by default), 1 when not, 2 when the test could not run. Without `--gateway-url` the local model
server and gateway are started on free loopback ports (the commands of `make run`) and stopped
afterwards. Writes to `results/loadtest/<UTC timestamp>/`: Locust's CSV and HTML reports,
`requests.csv` (every request), `latency.png` (latency over time), `summary.json` (settings,
verdict, percentiles, the CPU other processes used meanwhile) and the stack's logs.
"""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import CliApp

from common.machine import OtherLoad, OtherLoadMonitor, machine_description
from common.processes import StopRequestedError, raise_stop
from common.repository import REPO_ROOT, code_version
from loadtest import report
from loadtest.settings import GRPC_USER, Settings
from loadtest.stack import LocalStack, StackError

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
# Users still in a request when the time is up may finish it (and report it) within this time.
STOP_TIMEOUT_SECONDS = 10
EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def build_settings(argv: list[str] | None = None) -> Settings:
    """The settings: AIDETECT_LOADTEST_* variables, each overridden by its option (`--help` lists
    them), with pydantic-settings' own command-line source."""
    return CliApp.run(Settings, cli_args=argv)


def locust_command(
    settings: Settings, gateway_url: str, model_server_address: str, user_classes: list[str], output: Path
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        f"--locustfile={LOCUSTFILE}",
        "--headless",
        f"--users={settings.users}",
        f"--spawn-rate={settings.spawn_rate}",
        f"--run-time={settings.duration}",
        f"--stop-timeout={STOP_TIMEOUT_SECONDS}",
        f"--host={gateway_url}",
        f"--csv={output / 'locust'}",
        "--csv-full-history",
        f"--html={output / 'locust_report.html'}",
        "--only-summary",
        f"--uploads={settings.uploads_directory}",
        f"--model-server={model_server_address}",
        f"--model-name={settings.model_name}",
        f"--version-label={settings.version_label}",
        f"--wait-min={settings.wait_min_seconds}",
        f"--wait-max={settings.wait_max_seconds}",
        f"--request-log={output / 'requests.csv'}",
        *user_classes,
    ]


def run_locust(command: list[str], log_path: Path) -> int:
    """Locust's output goes to the console and to `log_path`."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for line in process.stdout or ():
                sys.stdout.write(line)
                log.write(line)
            return process.wait()
        finally:
            if process.poll() is None:  # interrupted: do not leave Locust running on its own
                process.terminate()
                process.wait()


def results_folder(base: Path) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = base / stamp
    suffix = 1
    while folder.exists():
        folder = base / f"{stamp}-{suffix}"
        suffix += 1
    folder.mkdir(parents=True)
    return folder


@dataclass(frozen=True)
class Outcome:
    verdict: report.Verdict
    summaries: list[report.LatencySummary]
    other_load: OtherLoad


def execute(settings: Settings, output: Path) -> Outcome:
    """Start the stack if needed, run Locust, judge, and write summary.json and latency.png."""
    stack: LocalStack | None = None
    gateway_url, model_server_address = settings.gateway_url, settings.model_server_address or ""
    user_classes = list(settings.user_classes)
    monitor = OtherLoadMonitor()
    try:
        if gateway_url is None:
            print(f"starting the local stack from {settings.models_directory} ...", flush=True)
            stack = LocalStack(
                settings.models_directory,
                settings.model_config_file,
                output / "logs",
                model_name=settings.model_name,
            )
            stack.start(settings.stack_ready_timeout_seconds)
            gateway_url, model_server_address = stack.gateway_url, stack.model_server_address
            print(f"stack ready: gateway {gateway_url}, model server {model_server_address}", flush=True)
        if GRPC_USER in user_classes and not model_server_address:
            print(f"no model server address given: {GRPC_USER} is left out", flush=True)
            user_classes.remove(GRPC_USER)
        if not user_classes:
            raise StackError("no user class left to run")
        command = locust_command(settings, gateway_url, model_server_address, user_classes, output)
        monitor.start()
        locust_exit_code = run_locust(command, output / "locust.log")
        other_load = monitor.stop()
    finally:
        if stack is not None:
            stack.stop()
    request_log = output / "requests.csv"
    if not request_log.is_file():
        raise StackError(
            f"Locust exited with code {locust_exit_code} and wrote no request log (see locust.log)"
        )
    records = report.read_request_log(request_log)
    summaries = report.summarize(records)
    verdict = report.judge(summaries, settings.p95_limit_milliseconds)
    if records:
        report.plot_latency_over_time(
            records,
            output / "latency.png",
            settings.p95_limit_milliseconds,
            history_csv=output / "locust_stats_history.csv",
            title=f"{settings.users} users ({', '.join(user_classes)}), think time "
            f"{settings.wait_min_seconds}-{settings.wait_max_seconds} s",
        )
    summary = {
        "passed": verdict.passed,
        "reasons": verdict.reasons,
        "p95_limit_ms": settings.p95_limit_milliseconds,
        "requests": [item.to_dict() for item in summaries],
        "locust_exit_code": locust_exit_code,
        "gateway_url": gateway_url,
        "model_server_address": model_server_address,
        "started_stack": stack is not None,
        "user_classes": user_classes,
        "settings": json.loads(settings.model_dump_json()),
        "other_processes": other_load.to_dict(),
        "machine": machine_description(),
        "code_version": code_version(),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return Outcome(verdict, summaries, other_load)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = build_settings(argv)
    except ValueError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return EXIT_ERROR
    output = results_folder(settings.results_directory)
    try:
        outcome = execute(settings, output)
    except StackError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return EXIT_ERROR
    except StopRequestedError as stop:
        print(f"loadtest: {stop.args[0]}: stopped (the stack it started is stopped too)", file=sys.stderr)
        return EXIT_ERROR
    print()
    print(report.render_summary_table(outcome.summaries))
    print(f"meanwhile {outcome.other_load.describe()}")
    print(f"results: {output}")
    verdict = outcome.verdict
    if verdict.passed:
        limit = settings.p95_limit_milliseconds
        print(f"PASSED: no failed request{f', every p95 <= {limit:.0f} ms' if limit > 0 else ''}")
        return EXIT_PASSED
    print("FAILED: " + "; ".join(verdict.reasons))
    return EXIT_FAILED


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the stack this run started is stopped on the way out.
    signal.signal(signal.SIGTERM, raise_stop)
    sys.exit(main())
