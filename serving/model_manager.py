"""Which model versions are loaded, and which one answers a request: TF Serving's ServerCore, small.

- Reads `models.config` (common/model_config.py); base paths go through the prefix map
  (`/models=./models`), the local server's one deviation from the production paths.
- Polls every base path each `file_system_poll_wait_seconds`: integer folders are versions,
  nothing else is (dot-folders of half-written exports, `tmp`, files). The version policy
  (`latest` with num_versions, `all`, `specific`) picks the aspired versions.
- Loads a new version on a loader thread (START -> LOADING), replays its warmup records
  (assets.extra/tf_serving_warmup_requests) through the same predict path requests take, and
  only then marks it AVAILABLE and routes to it. A load that fails (after
  `max_num_load_retries`) ends in END with its error, visible in GetModelStatus, and is not
  retried while that version stays aspired; it never replaces a working version.
- Unloads with TF Serving's availability-preserving policy: a version leaves (UNLOADING ->
  END) only once an aspired version is AVAILABLE (or nothing is aspired any more), and only
  after the requests using it have finished.
- Version labels follow TF Serving's rule: a label may only point at an AVAILABLE version
  (with --allow_version_labels_for_unavailable_models a new label may name any version, but
  moving an existing label still needs an AVAILABLE version); a config breaking it is refused
  with FAILED_PRECONDITION and the previous labels stay.
- A request without a version gets the highest AVAILABLE version ("latest").
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from common import model_config, model_versions, tensors
from common.signatures import SERVING_SIGNATURE, WARMUP_FILE
from serving.batching import BatchScheduler
from serving.errors import (
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ServingError,
    UnavailableError,
    UnimplementedError,
)
from serving.metrics import ServerMetrics
from serving.request_checks import require_model_name, validate_inputs, validate_output_filter
from serving.runtime import (
    RUNTIME_LABEL,
    Runtime,
    RuntimeFactory,
    SignatureSpec,
    load_runtime,
    read_signature_defs,
)
from serving.server_config import aspired_versions, map_base_path, validate_config

logger = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit per model version


class VersionState(enum.IntEnum):
    """ModelVersionStatus.State, same numbers as the proto."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(eq=False)
class ServableVersion:
    model_name: str
    version: int
    path: Path
    state: VersionState = VersionState.START
    error: ServingError | None = None
    runtime: Runtime | None = None
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = field(default_factory=dict)
    signatures: dict[str, SignatureSpec] = field(default_factory=dict)
    in_flight: int = 0


@dataclass(eq=False)
class ModelEntry:
    name: str
    config: model_config.ModelConfig
    base_path: Path
    versions: dict[int, ServableVersion] = field(default_factory=dict)
    aspired: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    labels: dict[str, int] = field(default_factory=dict)
    scanned: bool = False  # False until the first poll: requests meanwhile get UNAVAILABLE
    removed: bool = False


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: VersionState
    error: ServingError | None


def read_tfrecords(path: Path) -> Iterator[bytes]:
    """Records of a TFRecord file, read by TensorFlow's own reader (as TF Serving's warmup does):
    lengths and data checked against their CRCs, so a damaged or foreign file is DATA_LOSS."""
    import tensorflow as tf  # loaded already: warmup follows the model's load

    try:
        for record in tf.data.TFRecordDataset(str(path)):
            yield record.numpy()
    except tf.errors.OpError as error:
        raise DataLossError(
            f"Error reading warmup data from {path}: {error.message}. "
            "Please verify your warmup data is in TFRecord format."
        ) from error


class ModelManager:
    def __init__(
        self,
        *,
        runtime_factory: RuntimeFactory = load_runtime,
        metrics: ServerMetrics,
        prefix_map: Sequence[tuple[str, Path]] = (),
        batch_scheduler: BatchScheduler | None = None,
        enable_warmup: bool = True,
        warmup_iterations: int = 1,
        max_load_retries: int = 5,
        load_retry_interval_seconds: float = 60.0,
        allow_labels_for_unavailable_models: bool = False,
        file_system_poll_seconds: float = 1.0,
        load_threads: int = 1,
    ) -> None:
        self._runtime_factory = runtime_factory
        self._metrics = metrics
        self._prefix_map = list(prefix_map)
        self._batch_scheduler = batch_scheduler
        self._enable_warmup = enable_warmup
        self._warmup_iterations = max(1, warmup_iterations)
        self._max_load_retries = max(0, max_load_retries)
        self._load_retry_interval_seconds = load_retry_interval_seconds
        self._allow_labels_for_unavailable_models = allow_labels_for_unavailable_models
        self._file_system_poll_seconds = file_system_poll_seconds
        self._condition = threading.Condition(threading.RLock())
        self._config_lock = threading.Lock()
        self._models: dict[str, ModelEntry] = {}
        self._retiring: dict[str, ModelEntry] = {}
        self._labels_ready = False
        # Set once the first config's models are known (or it failed): ports open after that, so
        # an early request hears UNAVAILABLE (loading), never NOT_FOUND.
        self._first_config_registered = threading.Event()
        self._stop = threading.Event()
        self._loader = ThreadPoolExecutor(max_workers=max(1, load_threads), thread_name_prefix="model-load")
        # Unloads wait for the requests still using a version, so they must not hold up loads.
        self._unloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-unload")
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------ lifecycle

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (from any thread) after version states or labels change, e.g. to update health."""
        self._listeners.append(callback)

    def start(
        self,
        initial_config: model_config.ModelServerConfig,
        *,
        on_fatal: Callable[[Exception], None],
        config_file: Path | None = None,
        config_file_text: str = "",
        config_file_poll_seconds: float = 0.0,
    ) -> None:
        """Apply the first config in the background (TF Serving refuses to start when it fails:
        `on_fatal` is told), then keep polling the base paths and, if asked, the config file."""

        def apply_initial_config() -> None:
            try:
                self.apply_config(initial_config)
                self._require_first_loads()
            except ServingError as error:
                on_fatal(error)
            finally:
                self._first_config_registered.set()

        self._spawn("initial-config", apply_initial_config)
        if self._file_system_poll_seconds > 0:
            self._spawn("file-system-poll", self._poll_file_system)
        if config_file is not None and config_file_poll_seconds > 0:
            self._spawn(
                "config-file-poll",
                lambda: self._poll_config_file(config_file, config_file_text, config_file_poll_seconds),
            )

    def _require_first_loads(self) -> None:
        """TF Serving refuses to start when a configured model's versions all failed to load
        (ServerCore::Create: "N servable(s) did not become available"); a model with no version
        on disk yet is waited for instead."""
        with self._condition:
            failed = [
                f"{{name: {servable.model_name} version: {servable.version}}} due to error: {servable.error}"
                for entry in self._models.values()
                if not any(servable.state == VersionState.AVAILABLE for servable in entry.versions.values())
                for servable in entry.versions.values()
                if servable.state == VersionState.END and servable.error is not None
            ]
        if failed:
            raise UnavailableError(f"{len(failed)} servable(s) did not become available: {', '.join(failed)}")

    def wait_until_registered(self, timeout: float | None = None) -> bool:
        """Block until the first config's models are registered (they may still be loading)."""
        return self._first_config_registered.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()
        self._loader.shutdown(wait=True, cancel_futures=True)
        self._unloader.shutdown(wait=True)
        with self._condition:
            servables = [
                servable
                for entry in [*self._models.values(), *self._retiring.values()]
                for servable in entry.versions.values()
                if servable.runtime is not None
            ]
        for servable in servables:
            self._close_runtime(servable)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _notify(self) -> None:
        with self._condition:
            self._condition.notify_all()
        for callback in self._listeners:
            callback()

    # ------------------------------------------------------------ config

    def apply_config(
        self, config: model_config.ModelServerConfig, *, wait_for_new_models: bool = True
    ) -> None:
        """TF Serving's ReloadConfig: add, update and remove models, wait for new models' first
        load attempts, then apply the labels (refused with FAILED_PRECONDITION when one points at
        a version that is not AVAILABLE; the rest of the config stays applied, as in TF Serving)."""
        validate_config(config)
        base_paths = {
            entry.name: map_base_path(entry.base_path, self._prefix_map)
            for entry in config.model_config_list.config
        }
        with self._config_lock:
            added: list[ModelEntry] = []
            with self._condition:
                models: dict[str, ModelEntry] = {}
                for entry_config in config.model_config_list.config:
                    entry = self._models.get(entry_config.name)
                    if entry is None and entry_config.name in self._retiring:
                        # Removed earlier, back now: a new model as far as waiting goes.
                        entry = self._retiring.pop(entry_config.name)
                        added.append(entry)
                    base_path = base_paths[entry_config.name]
                    if entry is None:
                        entry = ModelEntry(name=entry_config.name, config=entry_config, base_path=base_path)
                        added.append(entry)
                    entry.config = model_config.ModelConfig()
                    entry.config.CopyFrom(entry_config)
                    entry.base_path = base_path
                    entry.removed = False
                    models[entry.name] = entry
                for name, entry in self._models.items():
                    if name not in models:
                        entry.removed = True
                        entry.labels = {}
                        self._retiring[name] = entry
                self._models = models
                self._first_config_registered.set()
                # A re-added model's versions may still be unloading; load them again after.
                self._condition.wait_for(
                    lambda: (
                        self._stop.is_set()
                        or not any(
                            servable.state == VersionState.UNLOADING
                            for entry in added
                            for servable in entry.versions.values()
                        )
                    )
                )
            self.poll_file_system()
            if wait_for_new_models:
                self._wait_until_settled(added)
            self._apply_labels(config)
        self._notify()

    def _wait_until_settled(self, entries: Sequence[ModelEntry]) -> None:
        def settled() -> bool:
            return self._stop.is_set() or all(
                entry.versions.get(version) is not None
                and entry.versions[version].state not in (VersionState.START, VersionState.LOADING)
                for entry in entries
                for version in entry.aspired
            )

        with self._condition:
            self._condition.wait_for(settled)

    def _apply_labels(self, config: model_config.ModelServerConfig) -> None:
        wanted = {entry.name: dict(entry.version_labels) for entry in config.model_config_list.config}
        with self._condition:
            for name, labels in wanted.items():
                current = self._models[name].labels
                for label, version in sorted(labels.items()):
                    # TF Serving (ServerCore::UpdateModelVersionLabelMap): with the flag, only a new
                    # label may name a version that is not available; moving an existing one may not.
                    moved = label in current and current[label] != version
                    if self._allow_labels_for_unavailable_models and not moved:
                        continue
                    servable = self._models[name].versions.get(version)
                    if servable is None or servable.state != VersionState.AVAILABLE:
                        raise FailedPreconditionError(
                            f"Request to assign label to version {version} of model {name}, "
                            f"which is not currently available for inference (label {label!r})"
                        )
            for name, entry in self._models.items():
                entry.labels = wanted.get(name, {})
            self._labels_ready = True

    def _poll_config_file(self, path: Path, applied_text: str, interval_seconds: float) -> None:
        """Re-read the config file and apply it on every poll, changed or not, as TF Serving does:
        the file is the truth, so a config pushed by HandleReloadConfigRequest lasts one poll."""
        last_error: str | None = None
        while not self._stop.wait(interval_seconds):
            try:
                text = path.read_text()
            except OSError as error:
                if str(error) != last_error:
                    logger.error("Failed to read ModelServerConfig file %s: %s", path, error)
                last_error = str(error)
                continue
            try:
                self.apply_config(model_config.parse(text))
            except (model_config.ModelConfigError, ServingError) as error:
                if str(error) != last_error:
                    logger.error("Reloading the model config from %s failed: %s", path, error)
                last_error = str(error)
            else:
                if text != applied_text or last_error is not None:
                    logger.info("Applied the model config from %s", path)
                last_error = None
            applied_text = text

    # ------------------------------------------------------------ versions: polling, loading, unloading

    def _poll_file_system(self) -> None:
        while not self._stop.wait(self._file_system_poll_seconds):
            self.poll_file_system()

    def poll_file_system(self) -> None:
        """One pass: scan every base path, start loads, start unloads."""
        with self._condition:
            entries = [*self._models.values(), *self._retiring.values()]
        for entry in entries:
            on_disk = {} if entry.removed else model_versions.version_folders(entry.base_path)
            self._reconcile(entry, on_disk)

    def _reconcile(self, entry: ModelEntry, on_disk: dict[int, Path]) -> None:
        to_load: list[ServableVersion] = []
        with self._condition:
            if entry.removed:
                entry.aspired = set()
            else:
                entry.aspired = aspired_versions(entry.config, on_disk)
                if not entry.scanned and not on_disk:
                    logger.warning(
                        "No versions of servable %s found under base path %s", entry.name, entry.base_path
                    )
            entry.scanned = True
            entry.failed &= entry.aspired  # leaving the aspired set forgives a failed load
            for version in sorted(entry.aspired, reverse=True):  # TF Serving loads the newest first
                current = entry.versions.get(version)
                if version in entry.failed or (current is not None and current.state != VersionState.END):
                    continue
                servable = ServableVersion(entry.name, version, on_disk[version], state=VersionState.START)
                entry.versions[version] = servable
                to_load.append(servable)
            to_unload = self._choose_unloads(entry)
        for servable in to_load:
            logger.info(
                "Loading servable %s version %d from %s", servable.model_name, servable.version, servable.path
            )
            self._loader.submit(self._load, entry, servable)
        for servable in to_unload:
            self._unloader.submit(self._unload, servable)
        if to_load or to_unload:
            self._notify()

    def _choose_unloads(self, entry: ModelEntry) -> list[ServableVersion]:
        """Under the lock. TF Serving's AvailabilityPreservingPolicy: unload versions that are no
        longer aspired once an aspired one serves (or none is aspired); else keep the newest."""
        available = [
            servable for servable in entry.versions.values() if servable.state == VersionState.AVAILABLE
        ]
        unaspired = sorted(
            (servable for servable in available if servable.version not in entry.aspired),
            key=lambda s: s.version,
        )
        aspired_serving = any(servable.version in entry.aspired for servable in available)
        chosen = unaspired if not entry.aspired or aspired_serving else unaspired[:-1]
        for servable in chosen:
            servable.state = VersionState.UNLOADING
        return chosen

    def _load(self, entry: ModelEntry, servable: ServableVersion) -> None:
        with self._condition:
            servable.state = VersionState.LOADING
        self._notify()
        model_path = str(servable.path)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                servable.runtime = self._runtime_factory(servable.path)
                servable.signature_defs = read_signature_defs(servable.path)
                servable.signatures = servable.runtime.signatures()
                if self._enable_warmup:
                    self._warm_up(servable)
            except Exception as error:  # noqa: BLE001 - a model folder can fail to load in any way; report it
                self._metrics.load_attempt_count.increment(model_path, "fail")
                self._close_runtime(servable)
                attempt += 1
                failure = (
                    error
                    if isinstance(error, ServingError)
                    else ServingError(f"{type(error).__name__}: {error}")
                )
                if attempt > self._max_load_retries or self._stop.wait(self._load_retry_interval_seconds):
                    logger.error(
                        "Loading servable %s version %d failed: %s",
                        servable.model_name,
                        servable.version,
                        failure,
                    )
                    with self._condition:
                        servable.state = VersionState.END
                        servable.error = failure
                        entry.failed.add(servable.version)
                    self._notify()
                    return
                logger.warning(
                    "Loading servable %s version %d failed (%s); retry %d of %d",
                    servable.model_name,
                    servable.version,
                    failure,
                    attempt,
                    self._max_load_retries,
                )
                continue
            break
        self._metrics.load_attempt_count.increment(model_path, "success")
        self._metrics.load_latency.increment(model_path, amount=int((time.monotonic() - started) * 1e6))
        with self._condition:
            servable.state = VersionState.AVAILABLE
            to_unload = self._choose_unloads(entry)
        logger.info(
            "Successfully loaded servable version {name: %s version: %d}",
            servable.model_name,
            servable.version,
        )
        for old in to_unload:
            self._unloader.submit(self._unload, old)
        self._notify()

    def _unload(self, servable: ServableVersion) -> None:
        with self._condition:
            self._condition.wait_for(lambda: servable.in_flight == 0)
        self._close_runtime(servable)
        with self._condition:
            servable.state = VersionState.END
        logger.info("Unloaded servable version {name: %s version: %d}", servable.model_name, servable.version)
        self._notify()

    def _close_runtime(self, servable: ServableVersion) -> None:
        runtime, servable.runtime = servable.runtime, None
        if runtime is not None:
            runtime.close()
        if self._batch_scheduler is not None:
            self._batch_scheduler.forget(id(servable))

    def _warm_up(self, servable: ServableVersion) -> None:
        path = servable.path / WARMUP_FILE
        if not path.is_file():
            return
        count = 0
        for record in read_tfrecords(path):
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise InvalidArgumentError(  # sic: TF Serving's words, "exceeeds"
                    f"Number of warmup records exceeeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
                )
            prediction_log = prediction_log_pb2.PredictionLog()
            try:
                prediction_log.ParseFromString(record)
            except DecodeError as error:
                raise InvalidArgumentError(f"Failed to parse warmup record from {path}: {error}") from error
            log_type = prediction_log.WhichOneof("log_type")
            if log_type != "predict_log":
                raise UnimplementedError(f"Unsupported log_type for warmup: {log_type}")
            request = prediction_log.predict_log.request
            try:
                inputs = {alias: tensors.to_numpy(proto) for alias, proto in request.inputs.items()}
            except tensors.TensorError as error:
                raise InvalidArgumentError(f"warmup request at {path}: {error}") from error
            for _ in range(self._warmup_iterations):
                self.predict(
                    servable, request.model_spec.signature_name, inputs, tuple(request.output_filter)
                )
        logger.info(
            "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
            servable.path,
            count,
        )

    # ------------------------------------------------------------ requests

    @contextmanager
    def servable(
        self, model_name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[ServableVersion]:
        """The AVAILABLE version a request names, held (not unloaded) until the block ends."""
        with self._condition:
            servable = self._resolve(model_name, version, label)
            servable.in_flight += 1
        try:
            yield servable
        finally:
            with self._condition:
                servable.in_flight -= 1
                if servable.in_flight == 0:
                    self._condition.notify_all()

    def _version_for_label(self, model_name: str, label: str) -> int:
        if not self._labels_ready:
            raise UnavailableError(
                f"Model labels are not initialised yet (label {label!r}): the model config is loading"
            )
        entry = self._models.get(model_name)
        if entry is None or label not in entry.labels:
            raise InvalidArgumentError(f"Unrecognized servable version label: {label}")
        return entry.labels[label]

    def _resolve(self, model_name: str, version: int | None, label: str | None) -> ServableVersion:
        require_model_name(model_name)
        if label is not None:
            version = self._version_for_label(model_name, label)
        request = f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
        entry = self._models.get(model_name)
        if entry is None:
            raise NotFoundError(f"Servable not found for request: {request}")
        loading = {VersionState.START, VersionState.LOADING}
        if version is not None:
            servable = entry.versions.get(version)
            if servable is not None and servable.state == VersionState.AVAILABLE:
                return servable
            if servable is not None and servable.state in loading:
                raise UnavailableError(
                    f"Servable {request} is not available yet: it is {servable.state.name}"
                )
            raise NotFoundError(f"Servable not found for request: {request}")
        available = [
            servable for servable in entry.versions.values() if servable.state == VersionState.AVAILABLE
        ]
        if available:
            return max(available, key=lambda servable: servable.version)
        if not entry.scanned or any(servable.state in loading for servable in entry.versions.values()):
            raise UnavailableError(
                f"Servable {request} is not available yet: no version has finished loading"
            )
        raise NotFoundError(f"Servable not found for request: {request}")

    def signature(self, servable: ServableVersion, signature_name: str) -> tuple[str, SignatureSpec]:
        name = signature_name or SERVING_SIGNATURE
        spec = servable.signatures.get(name)
        if spec is None:
            raise FailedPreconditionError(f'Serving signature key "{name}" not found.')
        return name, spec

    def predict(
        self,
        servable: ServableVersion,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Validate against the signature, run (batched when batching is on), filter outputs.
        Returns (the signature name used, outputs by alias)."""
        name, spec = self.signature(servable, signature_name)
        inputs = validate_inputs(spec, inputs)
        wanted = validate_output_filter(spec, output_filter)
        runtime = servable.runtime
        if runtime is None:
            raise UnavailableError(f"Servable {servable.model_name} version {servable.version} is unloading")

        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.monotonic()
            outputs = runtime.run(name, batch)
            self._metrics.runtime_latency.observe(
                (time.monotonic() - started) * 1e6, servable.model_name, "Predict", RUNTIME_LABEL
            )
            return outputs

        if self._batch_scheduler is not None:
            key = (
                id(servable),
                name,
                tuple(sorted((alias, array.shape[1:], array.dtype.str) for alias, array in inputs.items())),
            )
            outputs = self._batch_scheduler.submit(key, inputs, run)
        else:
            outputs = run(inputs)
        return name, {alias: outputs[alias] for alias in wanted}

    # ------------------------------------------------------------ status

    def version_statuses(
        self, model_name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatus: every known version of the model (newest first), or one version."""
        require_model_name(model_name)
        with self._condition:
            if label is not None:
                version = self._version_for_label(model_name, label)
            entry = self._models.get(model_name) or self._retiring.get(model_name)
            if version is not None:
                servable = entry.versions.get(version) if entry else None
                if servable is None:
                    raise NotFoundError(f"Could not find version {version} of model {model_name}")
                return [VersionStatus(servable.version, servable.state, servable.error)]
            if entry is None or not entry.versions:
                raise NotFoundError(f"Could not find any versions of model {model_name}")
            return [
                VersionStatus(servable.version, servable.state, servable.error)
                for servable in sorted(entry.versions.values(), key=lambda s: s.version, reverse=True)
            ]

    def all_models_available(self) -> bool:
        """Health: the config is applied and every model has at least one AVAILABLE version."""
        with self._condition:
            return (
                self._labels_ready
                and bool(self._models)
                and all(
                    any(servable.state == VersionState.AVAILABLE for servable in entry.versions.values())
                    for entry in self._models.values()
                )
            )

    def model_names(self) -> list[str]:
        with self._condition:
            return sorted(self._models)

    def wait_for(self, predicate: Callable[[], bool], timeout_seconds: float) -> bool:
        """Block until `predicate` (called under the lock) holds or the time runs out."""
        with self._condition:
            return self._condition.wait_for(predicate, timeout_seconds)
