"""Server-side batching, configured by TF Serving's `batching.config` (BatchingParameters).

Like TF Serving's BatchingSession on a shared batch scheduler: requests for the same model
version, signature and trailing input shapes join an open batch until it holds
`max_batch_size` rows or its first request has waited `batch_timeout_micros`; one of
`num_batch_threads` threads then concatenates the inputs along dimension 0, pads them up to
the next `allowed_batch_sizes` entry (repeating the first row, as TF Serving does), runs the
signature once and hands every caller its own rows. A queue may hold `max_enqueued_batches`
batches (the open one included); beyond that a request fails at once with UNAVAILABLE and
TF Serving's message. A request with more rows than `max_batch_size` is rejected with
INVALID_ARGUMENT, as TF Serving does without `enable_large_batch_splitting` (which this
server does not implement). `pad_variable_length_inputs` is accepted and ignored.

The work runs on plain threads: the runtime releases the GIL while it computes.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.errors import InternalError, InvalidArgumentError, ServingError, UnavailableError
from serving.metrics import ServerMetrics

logger = logging.getLogger(__name__)

QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"

BatchRunner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _batching_parameters_class() -> type:
    """TF Serving's BatchingParameters (servables/tensorflow/session_bundle_config.proto), fields 1-7,
    built in a private descriptor pool: the tensorflow-serving-api wheel does not ship this proto."""
    field_proto = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="local_model_server/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
    ):
        message.field.add(
            name=name,
            number=number,
            type=field_proto.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=field_proto.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, type=field_proto.TYPE_INT64, label=field_proto.LABEL_REPEATED
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field_proto.TYPE_BOOL,
        label=field_proto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file_proto)
    message_class: type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )
    return message_class


BatchingParameters = _batching_parameters_class()


def parse_batching_parameters(text: str) -> Any:
    """A batching.config's text as the BatchingParameters proto: the one parser of that file (the
    server's batching and the export's warmup batch sizes). Newer TF Serving fields (large-batch
    splitting, priorities) are not implemented here: a warning, then they are ignored."""
    parameters = BatchingParameters()
    try:
        text_format.Parse(text, parameters)
    except text_format.ParseError as error:
        logger.warning("batching parameters: %s; parsing again ignoring fields this server lacks", error)
        parameters = BatchingParameters()
        text_format.Parse(text, parameters, allow_unknown_field=True)
    return parameters


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults (BasicBatchScheduler::Options) for unset fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ValueError("max_batch_size must be positive")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be non-negative")
        if self.max_enqueued_batches <= 0:
            raise ValueError("max_enqueued_batches must be positive")
        if self.num_batch_threads <= 0:
            raise ValueError("num_batch_threads must be positive")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size")

    @classmethod
    def from_text(cls, text: str) -> BatchingOptions:
        parameters = parse_batching_parameters(text)
        values: dict[str, object] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if parameters.HasField(name):
                values[name] = int(getattr(parameters, name).value)
        if parameters.HasField("thread_pool_name"):
            values["thread_pool_name"] = parameters.thread_pool_name.value
        values["allowed_batch_sizes"] = tuple(int(size) for size in parameters.allowed_batch_sizes)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: Path) -> BatchingOptions:
        return cls.from_text(Path(path).read_text())

    def padded_size(self, batch_size: int) -> int:
        for allowed in self.allowed_batch_sizes:
            if allowed >= batch_size:
                return allowed
        return batch_size


@dataclass(eq=False)
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    enqueued_at: float
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: ServingError | None = None


@dataclass(eq=False)
class _Batch:
    opened_at: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


@dataclass(eq=False)
class _Queue:
    runner: BatchRunner
    batches: list[_Batch] = field(default_factory=list)


def batch_size_of(inputs: dict[str, np.ndarray]) -> int:
    """The common 0th dimension of all inputs, with TF Serving's BatchingSession messages."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise InvalidArgumentError("Batching Run() input tensors must have at least one dimension")
        sizes.add(int(array.shape[0]))
    if len(sizes) != 1:
        raise InvalidArgumentError("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class BatchScheduler:
    """A shared pool of batch threads over one queue per batching key."""

    def __init__(self, options: BatchingOptions, metrics: ServerMetrics) -> None:
        self.options = options
        self._metrics = metrics
        self._condition = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        for index in range(self.options.num_batch_threads):
            thread = threading.Thread(
                target=self._work, name=f"{self.options.thread_pool_name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Run whatever is queued, then end the threads."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def forget(self, key_prefix: Hashable) -> None:
        """Drop the (empty) queues whose key starts with `key_prefix`, e.g. of an unloaded version."""
        with self._condition:
            for key in [key for key in self._queues if isinstance(key, tuple) and key[0] == key_prefix]:
                if not self._queues[key].batches:
                    del self._queues[key]

    def submit(
        self, key: Hashable, inputs: dict[str, np.ndarray], runner: BatchRunner
    ) -> dict[str, np.ndarray]:
        """Run `inputs` as part of a batch of requests with the same `key`; blocks until done."""
        size = batch_size_of(inputs)
        if size > self.options.max_batch_size:
            raise InvalidArgumentError(
                f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}"
            )
        if size == 0:
            return runner(inputs)
        task = _Task(inputs=inputs, size=size, enqueued_at=time.monotonic())
        with self._condition:
            if self._stopping:
                raise UnavailableError("the model server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(runner=runner)
            batch = queue.batches[-1] if queue.batches and not queue.batches[-1].closed else None
            if batch is None or batch.size + size > self.options.max_batch_size:
                if batch is not None:
                    batch.closed = True
                if len(queue.batches) >= self.options.max_enqueued_batches:
                    raise UnavailableError(QUEUE_FULL_MESSAGE)
                batch = _Batch(opened_at=task.enqueued_at)
                queue.batches.append(batch)
            batch.tasks.append(task)
            batch.size += size
            if batch.size >= self.options.max_batch_size:
                batch.closed = True
            self._condition.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        if task.outputs is None:
            raise InternalError("a batch finished without outputs for one of its requests")
        return task.outputs

    # ------------------------------------------------------------ batch threads

    def _next_batch(self) -> tuple[_Queue, _Batch] | None:
        """Under the lock: the ready batch whose first request waited longest, else wait for one."""
        timeout_seconds = self.options.batch_timeout_micros / 1e6
        while True:
            now = time.monotonic()
            ready: tuple[_Queue, _Batch] | None = None
            next_deadline: float | None = None
            for queue in self._queues.values():
                if not queue.batches:
                    continue
                first = queue.batches[0]
                deadline = first.opened_at + timeout_seconds
                if first.closed or deadline <= now or self._stopping:
                    if ready is None or first.opened_at < ready[1].opened_at:
                        ready = (queue, first)
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
            if ready is not None:
                ready[0].batches.pop(0)
                return ready
            if self._stopping:
                return None
            self._condition.wait(None if next_deadline is None else max(next_deadline - now, 0.0))

    def _work(self) -> None:
        while True:
            with self._condition:
                picked = self._next_batch()
            if picked is None:
                return
            queue, batch = picked
            self._run_batch(queue.runner, batch)

    def _run_batch(self, runner: BatchRunner, batch: _Batch) -> None:
        started = time.monotonic()
        padded_size = self.options.padded_size(batch.size)
        metrics = self._metrics
        for task in batch.tasks:
            metrics.queuing_latency.observe((started - task.enqueued_at) * 1e6, self.options.thread_pool_name)
        metrics.input_batch_size.observe(batch.size)
        metrics.processed_batch_size.observe(padded_size)
        metrics.padding_size.observe(padded_size - batch.size, str(padded_size))
        try:
            merged = {
                name: np.concatenate([task.inputs[name] for task in batch.tasks])
                for name in batch.tasks[0].inputs
            }
            if padded_size > batch.size:
                merged = {
                    name: np.concatenate([array, np.repeat(array[:1], padded_size - batch.size, axis=0)])
                    for name, array in merged.items()
                }
            outputs = runner(merged)
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded_size:
                    raise InternalError(
                        f"batched output {name!r} has shape {list(array.shape)}; "
                        f"expected {padded_size} rows in dimension 0"
                    )
            offset = 0
            for task in batch.tasks:
                task.outputs = {name: array[offset : offset + task.size] for name, array in outputs.items()}
                offset += task.size
        except ServingError as error:
            for task in batch.tasks:
                task.error = error
        except Exception as error:  # a batch thread must hand every failure back to its callers
            logger.exception("batch of %d failed", batch.size)
            for task in batch.tasks:
                task.error = InternalError(f"batch failed: {error}")
        finally:
            for task in batch.tasks:
                task.done.set()
