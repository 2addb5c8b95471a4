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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer

from common.model_config import CANARY_LABEL, DEFAULT_MODEL_NAME, STABLE_LABEL, ModelConfigError
from common.repository import SERVING_FOLDER
from k8s import canary_watch
from k8s.errors import (
    PublishError,
    RolloutError,
)
from k8s.kube import Kubectl
from k8s.model_servers import (
    ModelServer,
)
from k8s.rollout_steps import (
    SAVED_MODEL_FILE,
    ConfigStore,
    ReloadMode,
    Rollout,
    TrafficSwitch,
    publish_version,
    report,
)

DEFAULT_CONFIG = SERVING_FOLDER / "models.config"
ENV_PREFIX = "AIDETECT_ROLLOUT_"
TF_SERVING_GRPC_PORT = 8500
EXIT_ROLLED_BACK = 1
EXIT_ERROR = 2


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
