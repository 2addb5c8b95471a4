"""Roll a new model version out: publish, canary, watch, then promote or roll back.

    python -m k8s.rollout publish runs/.../export/3 --models-dir models/ai_detector
    python -m k8s.rollout --config serving/models.config --model-server 127.0.0.1:8500 \\
        --traffic-file /tmp/traffic.json start --version 3 --canary-percent 10
    python -m k8s.rollout --gateway-metrics-url http://127.0.0.1:8000/metrics watch --duration 600
    python -m k8s.rollout ... promote        # or: rollback (works at any step)
    python -m k8s.rollout ... run EXPORT_DIR --models-dir ...   # all of it

The order of every step follows TF Serving's rule that a version label may point only at a
loaded (AVAILABLE) version, and keeps every client request answerable:
- start:    load N+1 beside N (policy `specific`) -> wait until N+1 is AVAILABLE on every model
            server -> label `canary` -> N+1 -> wait until the label resolves to N+1 -> send the
            canary share of gateway traffic to `canary`.
- promote:  `stable` -> N+1 -> canary share 0 -> remove `canary` -> unload N.
- rollback: canary share 0 -> (`stable` back to N if it had moved) -> remove `canary` -> unload N+1.

models.config (ARCHITECTURE.md contract 3) is edited through common/model_config.py and saved
atomically; the model servers learn about it by polling the file (TF Serving's
--model_config_file_poll_wait_seconds; on a cluster the file is the tf-serving-models ConfigMap,
which this CLI patches) or at once with HandleReloadConfigRequest (`--reload grpc`).
The canary share reaches the gateways through a small JSON file they re-read (locally a file, on a
cluster the gateway-traffic ConfigMap): {"canary_label": "canary", "canary_percent": 10.0}.
"""

from __future__ import annotations

import contextlib
import enum
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import grpc
import typer

from common import model_config, model_versions
from common.files import write_text_atomically
from common.model_config import CANARY_LABEL, DEFAULT_MODEL_NAME, STABLE_LABEL, ModelConfigError
from common.repository import SERVING_FOLDER
from k8s import canary_watch
from k8s.errors import (
    MetricsError,
    ModelServerError,
    PublishError,
    RolloutError,
    RolloutStateError,
    WaitTimeoutError,
)
from k8s.kube import Kubectl
from k8s.model_servers import (
    AVAILABLE,
    ModelServer,
    label_points_at,
    version_unloaded,
    wait_for,
)

DEFAULT_CONFIG = SERVING_FOLDER / "models.config"
ENV_PREFIX = "AIDETECT_ROLLOUT_"
TRAFFIC_FILE_KEY = "traffic.json"
MODELS_CONFIG_KEY = "models.config"
SAVED_MODEL_FILE = "saved_model.pb"
TF_SERVING_GRPC_PORT = 8500
EXIT_ROLLED_BACK = 1
EXIT_ERROR = 2

Reporter = Callable[[str], None]


def report(message: str) -> None:
    """One line per step, on stdout, with the time: the rollout's log."""
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    typer.echo(f"{stamp} {message}")


class ReloadMode(enum.StrEnum):
    poll = "poll"  # the model servers poll models.config (TF Serving --model_config_file_poll_wait_seconds)
    grpc = "grpc"  # push it with HandleReloadConfigRequest to every model server, then also save it


# -- publish ----------------------------------------------------------------------------------


def publish_version(export_directory: Path, model_directory: Path) -> int:
    """Copy an exported SavedModel folder into `model_directory` as version N+1, atomically.

    The copy goes to a dot-folder first (model servers ignore non-integer names), then one rename
    makes it appear whole; an existing version is never replaced."""
    if not (export_directory / SAVED_MODEL_FILE).is_file():
        raise PublishError(f"{export_directory} is not a SavedModel folder (no {SAVED_MODEL_FILE})")
    model_directory.mkdir(parents=True, exist_ok=True)
    version = model_versions.next_version(model_directory)
    temporary = Path(tempfile.mkdtemp(prefix=f".publish-{version}-", dir=model_directory))
    try:
        shutil.copytree(export_directory, temporary, dirs_exist_ok=True)
        final = model_directory / str(version)
        if final.exists():  # published by someone else meanwhile
            raise PublishError(f"{final} appeared while copying; publish again")
        temporary.rename(final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return version


# -- models.config ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigState:
    """What models.config says about the model: loaded versions and where the labels point."""

    loaded: tuple[int, ...]
    stable: int | None
    canary: int | None

    @property
    def candidate(self) -> int | None:
        """The version being rolled out: the canary, else the newest loaded version beside stable."""
        if self.canary is not None:
            return self.canary
        if len(self.loaded) > 1:
            return max(self.loaded)
        return None

    def describe(self) -> str:
        return f"loaded {list(self.loaded)}, stable -> {self.stable}, canary -> {self.canary}"


def config_state(config: model_config.ModelServerConfig, model_name: str) -> ConfigState:
    entry = model_config.model(config, model_name)
    labels = dict(entry.version_labels)
    loaded = model_config.served_versions(config, model_name)
    if loaded is None:
        # Policy latest/all: the rollout switches to `specific`, starting from the stable version.
        loaded = [labels[STABLE_LABEL]] if STABLE_LABEL in labels else []
    return ConfigState(tuple(loaded), labels.get(STABLE_LABEL), labels.get(CANARY_LABEL))


@dataclass
class ConfigStore:
    """models.config on disk (the source of truth), and where else it must go when it changes."""

    path: Path
    model_name: str
    reload: ReloadMode = ReloadMode.poll
    kubectl: Kubectl | None = None
    configmap: str = "tf-serving-models"

    def load(self) -> model_config.ModelServerConfig:
        return model_config.load(self.path)

    def check_cluster_matches(self) -> None:
        """Refuse to start from a file that is not what the cluster serves (someone else edited one)."""
        if self.kubectl is None:
            return
        live = self.kubectl.run("get", "configmap", self.configmap, "--output", "json")
        text = json.loads(live).get("data", {}).get(MODELS_CONFIG_KEY, "")
        if model_config.parse(text) != self.load():
            raise RolloutStateError(
                f"ConfigMap {self.configmap} does not hold the same models.config as {self.path}: "
                "make them agree (commit the cluster's, or apply the file) before a rollout"
            )

    def apply(self, config: model_config.ModelServerConfig, servers: Sequence[ModelServer]) -> None:
        """The file first: model servers re-apply their config file on every poll, so a config
        pushed over gRPC that the file does not hold yet would be taken back by the next poll."""
        model_config.save(config, self.path)
        if self.kubectl is not None:
            self.kubectl.patch_configmap(self.configmap, MODELS_CONFIG_KEY, model_config.dumps(config))
        if self.reload is ReloadMode.grpc:
            for server in servers:
                server.reload_config(config)


# -- gateway traffic --------------------------------------------------------------------------


@dataclass
class TrafficSwitch:
    """The share of gateway requests sent to the canary label: a JSON document the gateways re-read."""

    canary_label: str = CANARY_LABEL
    file: Path | None = None
    kubectl: Kubectl | None = None
    configmap: str = "gateway-traffic"
    gateway_metrics_urls: list[str] = field(default_factory=list)
    settle_seconds: float = 5.0

    @property
    def configured(self) -> bool:
        return self.file is not None or self.kubectl is not None

    def document(self, percent: float) -> str:
        return json.dumps({"canary_label": self.canary_label, "canary_percent": percent}) + "\n"

    def set_percent(self, percent: float, say: Reporter = report) -> None:
        if not 0.0 <= percent <= 100.0:
            raise RolloutError(f"canary share must be 0..100 %, got {percent}")
        if not self.configured:
            raise RolloutError(
                "no way to reach the gateways: give --traffic-file (local) or --kube-namespace (cluster)"
            )
        text = self.document(percent)
        if self.file is not None:
            write_text_atomically(self.file, text)
        if self.kubectl is not None:
            self.kubectl.patch_configmap(self.configmap, TRAFFIC_FILE_KEY, text)
        say(f"gateway traffic: {percent:g}% of unpinned requests -> label {self.canary_label!r}")
        self.settle(percent, say)

    def settle(self, percent: float, say: Reporter) -> None:
        """Wait until every gateway applies the share (their gauge says so), else a fixed pause."""
        deadline = time.monotonic() + max(self.settle_seconds * 6, 30.0)
        while self.gateway_metrics_urls:
            try:
                shares = [
                    canary_watch.parse_gauge(canary_watch.http_get(url), canary_watch.CANARY_SHARE_METRIC)
                    for url in self.gateway_metrics_urls
                ]
            except MetricsError as error:
                say(f"cannot read the gateways' canary share ({error}); waiting {self.settle_seconds:g} s")
                break
            if not all(shares):
                missing = canary_watch.CANARY_SHARE_METRIC
                say(f"the gateways do not report {missing}; waiting {self.settle_seconds:g} s")
                break
            if all(abs(value - percent) < 1e-9 for values in shares for value in values):
                return
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"the gateways still report canary shares {shares}, not {percent:g}")
            time.sleep(0.5)
        time.sleep(self.settle_seconds)


# -- the rollout ------------------------------------------------------------------------------


def version_available(version: int) -> Callable[[ModelServer], bool]:
    """AVAILABLE on this server; a version that failed to load stops the wait at once."""

    def check(server: ModelServer) -> bool:
        state, error = server.version_status(version)
        if error:
            raise ModelServerError(f"version {version} failed to load on {server.address}: {error}")
        return state == AVAILABLE

    return check


@dataclass
class Rollout:
    store: ConfigStore
    servers: list[ModelServer]
    traffic: TrafficSwitch
    timeout_seconds: float = 600.0
    say: Reporter = report

    def state(self) -> ConfigState:
        return config_state(self.store.load(), self.store.model_name)

    def _edit(self, change: Callable[[model_config.ModelServerConfig], None], what: str) -> None:
        config = self.store.load()
        try:
            change(config)
        except ModelConfigError as error:
            raise RolloutStateError(f"cannot {what}: {error}") from error
        self.store.apply(config, self.servers)
        self.say(f"models.config: {what} ({config_state(config, self.store.model_name).describe()})")

    def _wait(self, check: Callable[[ModelServer], bool], what: str) -> None:
        self.say(f"waiting: {what}")
        wait_for(self.servers, check, what, self.timeout_seconds)

    def start(self, version: int, canary_percent: float) -> None:
        name = self.store.model_name
        state = self.state()
        self.say(f"start: version {version}, from {state.describe()}")
        if state.stable is None:
            raise RolloutStateError(f"models.config has no {STABLE_LABEL!r} label for {name!r}")
        if version == state.stable:
            raise RolloutStateError(f"version {version} is already {STABLE_LABEL!r}")
        if state.canary is not None and state.canary != version:
            raise RolloutStateError(
                f"label {CANARY_LABEL!r} points at version {state.canary}: promote or roll it back first"
            )
        if not 0.0 < canary_percent <= 100.0:
            raise RolloutError(f"the canary share must be in (0, 100] %, got {canary_percent}")
        self._require_traffic_switch()
        if version not in state.loaded:
            stable = state.stable

            def load_beside_stable(config: model_config.ModelServerConfig) -> None:
                loaded = model_config.served_versions(config, name) or [stable]
                model_config.set_specific_versions(config, name, [*loaded, version])

            self._edit(load_beside_stable, f"load version {version} beside {state.loaded}")
        self._wait(version_available(version), f"version {version} AVAILABLE on every model server")
        if state.canary != version:
            self._edit(
                lambda config: model_config.set_label(config, name, CANARY_LABEL, version),
                f"label {CANARY_LABEL!r} -> {version}",
            )
        self._wait(label_points_at(CANARY_LABEL, version), f"label {CANARY_LABEL!r} resolves to {version}")
        self.traffic.set_percent(canary_percent, self.say)
        self.say(f"canary running: version {version} gets {canary_percent:g}% of unpinned requests")

    def promote(self) -> None:
        name = self.store.model_name
        state = self.state()
        self.say(f"promote: from {state.describe()}")
        new = state.canary
        if new is None:
            raise RolloutStateError(f"no {CANARY_LABEL!r} label: nothing to promote (start a rollout first)")
        self._require_traffic_switch()
        old = state.stable
        self._wait(version_available(new), f"version {new} AVAILABLE on every model server")
        if state.stable != new:
            self._edit(
                lambda config: model_config.set_label(config, name, STABLE_LABEL, new),
                f"label {STABLE_LABEL!r} -> {new}",
            )
        self._wait(label_points_at(STABLE_LABEL, new), f"label {STABLE_LABEL!r} resolves to {new}")
        # Every request goes to `new` now (both labels point at it); stop the split before the
        # canary label goes, so no gateway asks for a label that no longer exists.
        self.traffic.set_percent(0.0, self.say)
        self._remove_canary_label()
        for version in state.loaded:
            if version != new:
                self._unload(version)
        self.say(f"promoted: version {new} is {STABLE_LABEL!r} (was {old})")

    def rollback(self) -> None:
        name = self.store.model_name
        state = self.state()
        self.say(f"rollback: from {state.describe()}")
        if self.traffic.configured:
            self.traffic.set_percent(0.0, self.say)
        new = state.candidate
        if new is None:
            self.say("rollback: no version being rolled out; canary share is 0")
            return
        if state.stable == new:
            previous = [version for version in state.loaded if version != new]
            if not previous:
                raise RolloutStateError(
                    f"version {new} is {STABLE_LABEL!r} and the previous version is unloaded already: "
                    "roll it out again as a new rollout (start --version <previous>)"
                )
            old = max(previous)
            self._wait(version_available(old), f"version {old} AVAILABLE on every model server")
            self._edit(
                lambda config: model_config.set_label(config, name, STABLE_LABEL, old),
                f"label {STABLE_LABEL!r} back -> {old}",
            )
            self._wait(label_points_at(STABLE_LABEL, old), f"label {STABLE_LABEL!r} resolves to {old}")
        self._remove_canary_label()
        self._unload(new)
        self.say(f"rolled back: version {new} unloaded, {STABLE_LABEL!r} is {self.state().stable}")

    def _require_traffic_switch(self) -> None:
        """Checked before the first edit, so a missing option never leaves a half-done step."""
        if not self.traffic.configured:
            raise RolloutError(
                "no way to reach the gateways: give --traffic-file (local) or --kube-namespace (cluster)"
            )

    def _remove_canary_label(self) -> None:
        if self.state().canary is None:
            return
        name = self.store.model_name
        self._edit(
            lambda config: model_config.remove_label(config, name, CANARY_LABEL), f"remove {CANARY_LABEL!r}"
        )
        self._wait(label_points_at(CANARY_LABEL, None), f"label {CANARY_LABEL!r} gone")

    def _unload(self, version: int) -> None:
        name = self.store.model_name
        if version in self.state().loaded:
            self._edit(
                lambda config: model_config.remove_version(config, name, version), f"unload version {version}"
            )
        self._wait(version_unloaded(version), f"version {version} unloaded")


# -- command line -----------------------------------------------------------------------------

app = typer.Typer(
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class Options:
    """The options every command shares (set before the command name, or as AIDETECT_ROLLOUT_*)."""

    config: Path
    model_name: str
    model_servers: list[str]
    reload: ReloadMode
    traffic_file: Path | None
    traffic_settle_seconds: float
    gateway_metrics_urls: list[str]
    timeout_seconds: float
    kube_namespace: str | None
    kube_context: str | None
    kube_models_configmap: str
    kube_traffic_configmap: str
    kube_tf_serving_selector: str

    @property
    def kubectl(self) -> Kubectl | None:
        return Kubectl(self.kube_namespace, self.kube_context) if self.kube_namespace else None


@app.callback()
def shared_options(
    context: typer.Context,
    config: Annotated[
        Path, typer.Option(help="models.config to edit (the source of truth)", envvar=f"{ENV_PREFIX}CONFIG")
    ] = DEFAULT_CONFIG,
    model_name: Annotated[str, typer.Option(envvar=f"{ENV_PREFIX}MODEL_NAME")] = DEFAULT_MODEL_NAME,
    model_server: Annotated[
        list[str] | None,
        typer.Option(
            help="gRPC host:port of a model server (repeat for each replica). "
            "On a cluster, leave it out: every TF Serving pod is reached by port-forward.",
            envvar=f"{ENV_PREFIX}MODEL_SERVERS",
        ),
    ] = None,
    reload: Annotated[
        ReloadMode,
        typer.Option(help="how model servers learn of a models.config edit", envvar=f"{ENV_PREFIX}RELOAD"),
    ] = ReloadMode.poll,
    traffic_file: Annotated[
        Path | None,
        typer.Option(
            help="the JSON file the gateway re-reads for its canary share (local runs)",
            envvar=f"{ENV_PREFIX}TRAFFIC_FILE",
        ),
    ] = None,
    traffic_settle_seconds: Annotated[
        float,
        typer.Option(
            help="pause after a canary-share change when the gateways do not report it",
            envvar=f"{ENV_PREFIX}TRAFFIC_SETTLE_SECONDS",
        ),
    ] = 5.0,
    gateway_metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            help="a gateway's /metrics URL (repeat for each replica)",
            envvar=f"{ENV_PREFIX}GATEWAY_METRICS_URLS",
        ),
    ] = None,
    timeout_seconds: Annotated[
        float, typer.Option(help="the longest wait for one step", envvar=f"{ENV_PREFIX}TIMEOUT_SECONDS")
    ] = 600.0,
    kube_namespace: Annotated[
        str | None,
        typer.Option(
            help="roll out on a cluster: the stack's namespace (kubectl)",
            envvar=f"{ENV_PREFIX}KUBE_NAMESPACE",
        ),
    ] = None,
    kube_context: Annotated[str | None, typer.Option(envvar=f"{ENV_PREFIX}KUBE_CONTEXT")] = None,
    kube_models_configmap: Annotated[str, typer.Option()] = "tf-serving-models",
    kube_traffic_configmap: Annotated[str, typer.Option()] = "gateway-traffic",
    kube_tf_serving_selector: Annotated[str, typer.Option()] = "app.kubernetes.io/name=tf-serving",
) -> None:
    """Roll a new model version out safely: publish, canary, watch, promote or roll back."""
    context.obj = Options(
        config=config,
        model_name=model_name,
        model_servers=list(model_server or []),
        reload=reload,
        traffic_file=traffic_file,
        traffic_settle_seconds=traffic_settle_seconds,
        gateway_metrics_urls=list(gateway_metrics_url or []),
        timeout_seconds=timeout_seconds,
        kube_namespace=kube_namespace,
        kube_context=kube_context,
        kube_models_configmap=kube_models_configmap,
        kube_traffic_configmap=kube_traffic_configmap,
        kube_tf_serving_selector=kube_tf_serving_selector,
    )


@contextlib.contextmanager
def open_rollout(options: Options) -> Iterator[Rollout]:
    """A Rollout wired to the model servers (given, or every TF Serving pod by port-forward)."""
    kubectl = options.kubectl
    with contextlib.ExitStack() as stack:
        addresses = options.model_servers
        if not addresses and kubectl is not None:
            pods = kubectl.ready_pods(options.kube_tf_serving_selector)
            addresses = stack.enter_context(kubectl.port_forwards(pods, TF_SERVING_GRPC_PORT))
            report(f"model servers: {len(pods)} pods ({', '.join(pods)}) through port-forward")
        if not addresses:
            raise RolloutError("give --model-server (local) or --kube-namespace (cluster)")
        servers = [ModelServer(address, options.model_name) for address in addresses]
        for server in servers:
            stack.callback(server.close)
        store = ConfigStore(
            options.config, options.model_name, options.reload, kubectl, options.kube_models_configmap
        )
        store.check_cluster_matches()
        traffic = TrafficSwitch(
            file=options.traffic_file,
            kubectl=kubectl,
            configmap=options.kube_traffic_configmap,
            gateway_metrics_urls=options.gateway_metrics_urls,
            settle_seconds=options.traffic_settle_seconds,
        )
        yield Rollout(store, servers, traffic, options.timeout_seconds)


# What can go wrong besides the rollout's own checks: an unreadable or invalid models.config, a
# file that cannot be written, a model server that answers an error.
OPERATIONAL_ERRORS = (RolloutError, ModelConfigError, OSError, grpc.RpcError)


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        return f"model server answered {getattr(code, 'name', code)}: {details}"
    return str(error) or type(error).__name__


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """The one place errors become messages and exit codes: 2 for any error (a crash, not a
    verdict), so it is never confused with 1, "rolled back cleanly"."""
    try:
        yield
    except OPERATIONAL_ERRORS as error:
        typer.echo(f"error: {describe(error)}", err=True)
        raise typer.Exit(EXIT_ERROR) from error


def _options(context: typer.Context) -> Options:
    options = context.obj
    if not isinstance(options, Options):
        raise RolloutError("shared options missing")
    return options


@app.command()
def publish(
    context: typer.Context,
    export_directory: Annotated[Path, typer.Argument(help="an exported version folder (has saved_model.pb)")],
    models_dir: Annotated[
        Path | None, typer.Option(help="models/<name>/ on the model volume, mounted here")
    ] = None,
    kube_publisher_pod: Annotated[
        str | None,
        typer.Option(help="on a cluster: the model-publisher pod (k8s/tools/model-publisher.yaml)"),
    ] = None,
    kube_models_dir: Annotated[
        str, typer.Option(help="models/<name>/ inside that pod")
    ] = "/models/ai_detector",
) -> None:
    """Copy an exported version into the model volume as version N+1 (dot-folder, then one rename)."""
    options = _options(context)
    with exit_codes():
        version = _publish(options, export_directory, models_dir, kube_publisher_pod, kube_models_dir)
        typer.echo(str(version))


def _publish(
    options: Options, export_directory: Path, models_dir: Path | None, pod: str | None, pod_models_dir: str
) -> int:
    if pod is not None:
        kubectl = options.kubectl
        if kubectl is None:
            raise RolloutError("--kube-publisher-pod needs --kube-namespace")
        if not (export_directory / SAVED_MODEL_FILE).is_file():
            raise PublishError(f"{export_directory} is not a SavedModel folder (no {SAVED_MODEL_FILE})")
        version = kubectl.publish(export_directory, pod, pod_models_dir)
    elif models_dir is not None:
        version = publish_version(export_directory, models_dir)
    else:
        raise RolloutError("give --models-dir (a mounted model volume) or --kube-publisher-pod")
    report(f"published {export_directory} as version {version}")
    return version


@app.command()
def start(
    context: typer.Context,
    version: Annotated[int, typer.Option(help="the published version to roll out")],
    canary_percent: Annotated[
        float, typer.Option(help="share of unpinned gateway requests for the canary")
    ] = 10.0,
) -> None:
    """Load the version beside stable, label it canary once AVAILABLE, then send it the canary share."""
    with exit_codes(), open_rollout(_options(context)) as rollout:
        rollout.start(version, canary_percent)


def _thresholds(max_error_ratio: float, max_p95_ms: float, min_requests: int) -> canary_watch.Thresholds:
    return canary_watch.Thresholds(max_error_ratio, max_p95_ms / 1000.0, min_requests)


def _health_source(options: Options, prometheus_url: str | None) -> canary_watch.HealthSource:
    if prometheus_url:
        return canary_watch.PrometheusSource(prometheus_url, CANARY_LABEL)
    if options.gateway_metrics_urls:
        return canary_watch.GatewayMetricsSource(options.gateway_metrics_urls, CANARY_LABEL)
    raise RolloutError("give --gateway-metrics-url (before the command) or --prometheus-url")


DurationOption = Annotated[float, typer.Option(help="how long to watch the canary, seconds")]
CheckEveryOption = Annotated[float, typer.Option(help="seconds between two looks at the metrics")]
ErrorRatioOption = Annotated[
    float, typer.Option(help="largest acceptable error ratio of the canary (0.01 = 1%)")
]
P95Option = Annotated[float, typer.Option(help="largest acceptable p95 of the canary's model calls, ms")]
MinRequestsOption = Annotated[
    int, typer.Option(help="fewer canary requests than this = no verdict = not healthy")
]
PrometheusOption = Annotated[
    str | None, typer.Option(help="read the metrics from this Prometheus server instead of the gateways")
]


@app.command()
def watch(
    context: typer.Context,
    duration: DurationOption = 300.0,
    check_every: CheckEveryOption = 10.0,
    max_error_ratio: ErrorRatioOption = 0.01,
    max_p95_ms: P95Option = 200.0,
    min_requests: MinRequestsOption = 50,
    prometheus_url: PrometheusOption = None,
) -> None:
    """Watch the canary's error ratio and p95; exit 0 when healthy, 1 when not (or too few requests)."""
    with exit_codes():
        source = _health_source(_options(context), prometheus_url)
        verdict = canary_watch.watch(
            source, _thresholds(max_error_ratio, max_p95_ms, min_requests), duration, check_every, report
        )
        report(f"verdict: {verdict.describe()}")
    if not verdict.healthy:
        raise typer.Exit(EXIT_ROLLED_BACK)


@app.command()
def promote(context: typer.Context) -> None:
    """stable -> the canary's version, canary share 0, canary label removed, the old version unloaded."""
    with exit_codes(), open_rollout(_options(context)) as rollout:
        rollout.promote()


@app.command()
def rollback(context: typer.Context) -> None:
    """At any step: canary share 0, stable back if it had moved, canary label gone, new version unloaded."""
    with exit_codes(), open_rollout(_options(context)) as rollout:
        rollout.rollback()


@app.command()
def status(context: typer.Context) -> None:
    """What models.config says, and each model server's version states and labels."""
    with exit_codes(), open_rollout(_options(context)) as rollout:
        report(f"models.config: {rollout.state().describe()}")
        for server in rollout.servers:
            labels = {label: server.label_version(label) for label in (STABLE_LABEL, CANARY_LABEL)}
            report(f"{server.address}: versions {server.version_states()}, labels {labels}")


@app.command()
def run(
    context: typer.Context,
    export_directory: Annotated[
        Path | None, typer.Argument(help="an exported version to publish first (or give --version)")
    ] = None,
    version: Annotated[int | None, typer.Option(help="roll out this already published version")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="models/<name>/ on the model volume")] = None,
    kube_publisher_pod: Annotated[str | None, typer.Option()] = None,
    kube_models_dir: Annotated[str, typer.Option()] = "/models/ai_detector",
    canary_percent: Annotated[float, typer.Option()] = 10.0,
    duration: DurationOption = 300.0,
    check_every: CheckEveryOption = 10.0,
    max_error_ratio: ErrorRatioOption = 0.01,
    max_p95_ms: P95Option = 200.0,
    min_requests: MinRequestsOption = 50,
    prometheus_url: PrometheusOption = None,
) -> None:
    """All of it: publish, start, watch, then promote (exit 0) or roll back (exit 1)."""
    options = _options(context)
    with exit_codes():
        source = _health_source(options, prometheus_url)
        # Can the canary be watched at all? Find out before anything changes.
        source.start()
        if export_directory is not None and version is None:
            version = _publish(options, export_directory, models_dir, kube_publisher_pod, kube_models_dir)
        elif version is None or export_directory is not None:
            raise RolloutError("give an export folder to publish, or --version of a published one")
        with open_rollout(options) as rollout:
            try:
                rollout.start(version, canary_percent)
                verdict = canary_watch.watch(
                    source,
                    _thresholds(max_error_ratio, max_p95_ms, min_requests),
                    duration,
                    check_every,
                    report,
                )
            except (*OPERATIONAL_ERRORS, KeyboardInterrupt) as error:
                report(f"rollout of version {version} stopped ({describe(error)}): rolling back")
                rollout.rollback()
                raise
            report(f"verdict: {verdict.describe()}")
            if verdict.healthy:
                rollout.promote()
                return
            rollout.rollback()
    raise typer.Exit(EXIT_ROLLED_BACK)


def main() -> None:
    app(prog_name="python -m k8s.rollout")


if __name__ == "__main__":
    main()
