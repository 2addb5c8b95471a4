"""Benchmark the local model server: gRPC throughput and latency, batching off vs on, next to the
raw in-process SavedModel, all measured in one run so the ratios compare like with like.

    python -m serving.benchmark --model-version-dir models/ai_detector/1 \\
        --batching-parameters-file serving/batching.cpu.config --output docs/serving-benchmark.md

For each mode (batching off, batching on) a fresh server process serves the version folder on
free loopback ports; 1, 4 and 16 concurrent clients (one channel each) send single-image
Predict requests to the uint8 signature for a fixed number of requests each, after a
warm-up. Reported: throughput (images/s), p50 and p95 latency, and throughput as a fraction
of the raw in-process SavedModel measured first in this process (batch 1, sequential calls,
and the best of a few larger batches). Images are the real uploads in ../shared/data/uploads
decoded with the shared preprocessing, or random pixels when that folder is absent.

Client and server share the machine's cores: on 2 cores the client threads take CPU from the
model, so run it on a quiet machine and read the ratios, not just the absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common import model_config, signatures
from common.machine import describe_machine
from common.preprocessing import IMAGE_SIZE, ImageInputError, decode_and_resize
from common.processes import DEFAULT_BATCHING_FILE, ManagedProcess, ModelServerFlags, free_port
from common.repository import REPO_ROOT, SHARED_UPLOADS
from common.tensors import to_tensor_proto

UPLOADS = SHARED_UPLOADS
MODEL_NAME = "benchmark_model"
DEFAULT_CONCURRENCY = (1, 4, 16)


@dataclass(frozen=True)
class Measurement:
    mode: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def images_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, percent: float) -> float:
        return float(np.percentile(self.latencies_ms, percent)) if self.latencies_ms else float("nan")


def load_images(count: int) -> np.ndarray:
    """Real uploads through the shared decode-and-resize, else random pixels."""
    images: list[np.ndarray] = []
    if UPLOADS.is_dir():
        for path in sorted(UPLOADS.iterdir()):
            if len(images) == count:
                break
            try:
                images.append(decode_and_resize(path.read_bytes()))
            except (ImageInputError, OSError):
                continue
    if not images:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    while len(images) < count:
        images.extend(images[: count - len(images)])
    return np.stack(images)


def measure_in_process(version_dir: Path, images: np.ndarray, calls: int, batch_sizes: Sequence[int]) -> dict:
    """Raw SavedModel: batch-1 sequential latency/throughput, and throughput at larger batches."""
    import tensorflow as tf  # here only: the server processes have their own

    loaded = tf.saved_model.load(str(version_dir))
    function = loaded.signatures[signatures.SERVING_SIGNATURE]

    def run(batch: np.ndarray) -> None:
        function(**{signatures.IMAGE_INPUT: tf.constant(batch)})

    for warmup in range(3):
        run(images[warmup % len(images)][None])
    latencies = []
    started = time.perf_counter()
    for call in range(calls):
        begin = time.perf_counter()
        run(images[call % len(images)][None])
        latencies.append((time.perf_counter() - begin) * 1000)
    single = calls / (time.perf_counter() - started)
    batched = {}
    for batch_size in batch_sizes:
        batch = np.stack([images[index % len(images)] for index in range(batch_size)])
        run(batch)
        rounds = max(1, calls // batch_size)
        begin = time.perf_counter()
        for _ in range(rounds):
            run(batch)
        batched[batch_size] = rounds * batch_size / (time.perf_counter() - begin)
    return {
        "batch1_images_per_second": single,
        "batch1_p50_ms": float(np.percentile(latencies, 50)),
        "batch1_p95_ms": float(np.percentile(latencies, 95)),
        "batched_images_per_second": batched,
    }


class ServerUnderTest:
    def __init__(self, version_dir: Path, workspace: Path, batching_file: Path | None, threads: int) -> None:
        models = workspace / "models" / MODEL_NAME
        models.mkdir(parents=True, exist_ok=True)
        target = models / "1"
        if not target.exists():
            target.symlink_to(version_dir.resolve(), target_is_directory=True)
        config_file = workspace / "models.config"
        model_config.save(model_config.new_config(MODEL_NAME, f"/models/{MODEL_NAME}"), config_file)
        self.port = free_port()
        flags = ModelServerFlags(
            grpc_port=self.port,
            rest_port=0,
            model_config_file=config_file,
            models_root=workspace / "models",
            batching_file=batching_file,
            extra=("--file_system_poll_wait_seconds=0", f"--grpc_max_threads={max(32, threads * 2)}"),
        )
        self.log_path = workspace / ("server-batching.log" if batching_file else "server.log")
        self.server = ManagedProcess("model server", flags.command(), self.log_path).start()

    def wait_until_serving(self, timeout_seconds: float = 600) -> None:
        deadline = time.monotonic() + timeout_seconds
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if not self.server.running:
                    raise RuntimeError(f"server exited: {self.server.log_tail()}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError("the server did not become SERVING")

    def stop(self) -> None:
        self.server.stop()


def make_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = signatures.SERVING_SIGNATURE
    request.inputs[signatures.IMAGE_INPUT].CopyFrom(to_tensor_proto(image[None]))
    return request


def run_clients(
    port: int, mode: str, clients: int, requests_per_client: int, images: np.ndarray
) -> Measurement:
    prepared = [make_request(image) for image in images]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(prepared[index % len(prepared)], timeout=600)  # connect and warm this channel
            start_barrier.wait()
            for number in range(requests_per_client):
                request = prepared[(index + number * clients) % len(prepared)]
                begin = time.perf_counter()
                try:
                    stub.Predict(request, timeout=600)
                except grpc.RpcError:
                    errors[index] += 1
                    continue
                latencies[index].append((time.perf_counter() - begin) * 1000)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    flat = [value for per_client in latencies for value in per_client]
    return Measurement(mode, clients, len(flat), seconds, flat, sum(errors))


def render_report(
    arguments: argparse.Namespace, raw: dict, measurements: list[Measurement], batching_text: str, card: dict
) -> str:
    raw_single = raw["batch1_images_per_second"]
    best_batch, best_batched = max(
        raw["batched_images_per_second"].items(), key=lambda item: item[1], default=(1, raw_single)
    )
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        "# Local model server benchmark",
        "",
        f"Written by `python -m serving.benchmark` on {now:%Y-%m-%d %H:%M} UTC;",
        f"machine: {describe_machine()}.",
        f"Model: `{arguments.model_version_dir}` ({card.get('backbone', 'unknown backbone')}).",
        f"Each client sends {arguments.requests_per_client} single-image gRPC Predict requests (uint8",
        f"{IMAGE_SIZE}x{IMAGE_SIZE}x3, `serving_default`) one after another, after one warm-up request "
        "per client.",
        "Client threads run on the same machine as the server and share its cores.",
        "",
        "## Raw SavedModel, in process (measured first, same run)",
        "",
        "| what | images/s | p50 ms | p95 ms |",
        "|---|---|---|---|",
        f"| batch 1, sequential | {raw_single:.1f} | {raw['batch1_p50_ms']:.1f} "
        f"| {raw['batch1_p95_ms']:.1f} |",
    ]
    for batch_size, rate in sorted(raw["batched_images_per_second"].items()):
        lines.append(f"| batch {batch_size} | {rate:.1f} | | |")
    lines += [
        "",
        "## Through the local server (gRPC)",
        "",
        f"`÷ raw b1` = server throughput / raw batch-1 throughput; `÷ raw best` = / raw batch-{best_batch}.",
        "",
        "| batching | clients | images/s | p50 ms | p95 ms | ÷ raw b1 | ÷ raw best | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for measurement in measurements:
        lines.append(
            f"| {measurement.mode} | {measurement.clients} | {measurement.images_per_second:.1f} | "
            f"{measurement.percentile(50):.1f} | {measurement.percentile(95):.1f} | "
            f"{measurement.images_per_second / raw_single:.2f} | "
            f"{measurement.images_per_second / best_batched:.2f} | "
            f"{measurement.errors} |"
        )
    lines += [
        "",
        "## Batching parameters (batching on)",
        "",
        "```",
        *[line for line in batching_text.splitlines() if line.strip() and not line.lstrip().startswith("#")],
        "```",
        "",
        "Reproduce: `python -m serving.benchmark " + " ".join(arguments.command_line) + "`",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-version-dir", type=Path, required=True, help="a SavedModel version folder")
    parser.add_argument("--batching-parameters-file", type=Path, default=DEFAULT_BATCHING_FILE)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--requests-per-client", type=int, default=40)
    parser.add_argument("--raw-calls", type=int, default=40, help="in-process calls for the raw baseline")
    parser.add_argument("--raw-batch-sizes", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--images", type=int, default=32, help="distinct images to cycle through")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "serving-benchmark.md")
    arguments = parser.parse_args(argv)
    arguments.command_line = list(argv) if argv is not None else sys.argv[1:]

    images = load_images(arguments.images)
    card_file = arguments.model_version_dir / signatures.MODEL_CARD_FILE
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    print("measuring the raw SavedModel in process ...", flush=True)
    raw = measure_in_process(
        arguments.model_version_dir, images, arguments.raw_calls, arguments.raw_batch_sizes
    )
    measurements: list[Measurement] = []
    workspace = Path(tempfile.mkdtemp(prefix="serving-benchmark-"))
    try:
        for mode, batching_file in (("off", None), ("on", arguments.batching_parameters_file)):
            server = ServerUnderTest(
                arguments.model_version_dir, workspace, batching_file, max(arguments.concurrency)
            )
            try:
                server.wait_until_serving()
                for clients in arguments.concurrency:
                    print(f"batching {mode}, {clients} clients ...", flush=True)
                    measurements.append(
                        run_clients(server.port, mode, clients, arguments.requests_per_client, images)
                    )
            finally:
                server.stop()
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    report = render_report(arguments, raw, measurements, arguments.batching_parameters_file.read_text(), card)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(report)
    print(report)
    print(f"written to {arguments.output}")
    return 0 if all(measurement.errors == 0 for measurement in measurements) else 1


if __name__ == "__main__":
    sys.exit(main())
