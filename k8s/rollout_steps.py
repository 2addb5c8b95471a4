"""The rollout's steps: publish a version, edit models.config, switch gateway traffic, and the
`Rollout` state machine (start, promote, rollback) that orders them by TF Serving's label rule.

The command line around them is k8s/rollout.py (`python -m k8s.rollout`); the order of every
step and why is described there.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import typer

from common import model_config, model_versions
from common.files import write_text_atomically
from common.model_config import CANARY_LABEL, STABLE_LABEL, ModelConfigError
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

TRAFFIC_FILE_KEY = "traffic.json"
MODELS_CONFIG_KEY = "models.config"
SAVED_MODEL_FILE = "saved_model.pb"

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
        self._point_label(CANARY_LABEL, version, state.canary)
        self.traffic.set_percent(canary_percent, self.say)
        self.say(f"canary running: version {version} gets {canary_percent:g}% of unpinned requests")

    def promote(self) -> None:
        state = self.state()
        self.say(f"promote: from {state.describe()}")
        new = state.canary
        if new is None:
            raise RolloutStateError(f"no {CANARY_LABEL!r} label: nothing to promote (start a rollout first)")
        self._require_traffic_switch()
        old = state.stable
        self._wait(version_available(new), f"version {new} AVAILABLE on every model server")
        self._point_label(STABLE_LABEL, new, state.stable)
        # Every request goes to `new` now (both labels point at it); stop the split before the
        # canary label goes, so no gateway asks for a label that no longer exists.
        self.traffic.set_percent(0.0, self.say)
        self._remove_canary_label()
        for version in state.loaded:
            if version != new:
                self._unload(version)
        self.say(f"promoted: version {new} is {STABLE_LABEL!r} (was {old})")

    def rollback(self) -> None:
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
            self._point_label(STABLE_LABEL, old, state.stable, arrow="back ->")
        self._remove_canary_label()
        self._unload(new)
        self.say(f"rolled back: version {new} unloaded, {STABLE_LABEL!r} is {self.state().stable}")

    def _require_traffic_switch(self) -> None:
        """Checked before the first edit, so a missing option never leaves a half-done step."""
        if not self.traffic.configured:
            raise RolloutError(
                "no way to reach the gateways: give --traffic-file (local) or --kube-namespace (cluster)"
            )

    def _point_label(self, label: str, version: int, current: int | None, arrow: str = "->") -> None:
        """`label` -> `version` in models.config unless it points there already, then wait until
        every model server resolves it (TF Serving's rule: only to a loaded version)."""
        name = self.store.model_name
        if current != version:
            self._edit(
                lambda config: model_config.set_label(config, name, label, version),
                f"label {label!r} {arrow} {version}",
            )
        self._wait(label_points_at(label, version), f"label {label!r} resolves to {version}")

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
