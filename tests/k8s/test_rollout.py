"""The rollout CLI against a real local model server (python -m serving.server) on loopback.

Every step is checked on the server itself (GetModelStatus, label resolution), not only in
models.config: versions load before a label moves, labels move, old versions unload. The
gateway side (traffic file) is checked as the file the gateway reads; the end-to-end test with
a gateway and client traffic is test_rollout_end_to_end.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common import model_config
from common.model_config import CANARY_LABEL, STABLE_LABEL
from k8s import rollout, rollout_steps
from k8s.errors import ModelServerError, PublishError, RolloutStateError
from k8s.model_servers import AVAILABLE, ModelServer
from tests.k8s.manifests_support import container, render
from tests.k8s.rollout_support import build_model, write_stable_config
from tests.serving.local_server_support import MODEL_NAME, ServerProcess, eventually, start_server

pytestmark = [pytest.mark.integration, pytest.mark.model]


@pytest.fixture(scope="module")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported versions, as export/ leaves them: a good one and one whose files are broken."""
    root = tmp_path_factory.mktemp("exports")
    good = build_model(root / "good", bias=0.0)
    better = build_model(root / "better", bias=0.5)
    broken = root / "broken"
    shutil.copytree(good, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    return {"good": good, "better": better, "broken": broken}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, built_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    (root / "models").mkdir()
    assert rollout_steps.publish_version(built_models["good"], root / "models" / MODEL_NAME) == 1
    write_stable_config(root / "models.config", 1)
    return root


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[ServerProcess]:
    process = start_server(
        [
            f"--model_config_file={workspace / 'models.config'}",
            "--model_config_file_poll_wait_seconds=0.5",
            "--file_system_poll_wait_seconds=0.5",
            # A version that fails to load ends at once (TF Serving retries 5 times a minute apart).
            "--max_num_load_retries=0",
            f"--model_base_path_prefix_map=/models={workspace / 'models'}",
            "--enable_reload_config_rpc",  # for --reload grpc
        ],
        workspace / "server.log",
    )
    watcher = ModelServer(process.grpc_address, MODEL_NAME)
    try:
        eventually(lambda: watcher.label_version(STABLE_LABEL) == 1, "version 1 serving as stable", process)
        yield process
    finally:
        watcher.close()
        process.stop()


@pytest.fixture
def model_server(server: ServerProcess) -> Iterator[ModelServer]:
    client = ModelServer(server.grpc_address, MODEL_NAME)
    yield client
    client.close()


def cli(workspace: Path, server: ServerProcess, *arguments: str, reload: str = "poll") -> str:
    shared = [
        "--config", str(workspace / "models.config"),
        "--model-server", server.grpc_address,
        "--reload", reload,
        "--traffic-file", str(workspace / "traffic.json"),
        "--traffic-settle-seconds", "0",
        "--timeout-seconds", "60",
    ]  # fmt: skip
    result = CliRunner().invoke(rollout.app, [*shared, *arguments], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def traffic(workspace: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((workspace / "traffic.json").read_text())
    return document


def served(model_server: ModelServer) -> dict[str, object]:
    """What the server does now: available versions and where the two labels resolve."""
    states = model_server.version_states()
    return {
        "available": sorted(version for version, state in states.items() if state == AVAILABLE),
        STABLE_LABEL: model_server.label_version(STABLE_LABEL),
        CANARY_LABEL: model_server.label_version(CANARY_LABEL),
    }


# -- publish ------------------------------------------------------------------------------------


def test_publish_is_atomic_and_never_overwrites(tmp_path: Path, built_models: dict[str, Path]) -> None:
    models = tmp_path / MODEL_NAME
    (models / "7").mkdir(parents=True)
    (models / ".publish-9-left-over").mkdir()  # a crashed copy: not a version
    (models / "notes").mkdir()
    assert rollout_steps.publish_version(built_models["good"], models) == 8
    assert (models / "8" / "saved_model.pb").read_bytes() == (
        built_models["good"] / "saved_model.pb"
    ).read_bytes()
    assert sorted(path.name for path in models.iterdir() if not path.name.startswith(".")) == [
        "7",
        "8",
        "notes",
    ]
    assert [path.name for path in models.iterdir() if path.name.startswith(".publish-8")] == []
    with pytest.raises(PublishError, match="not a SavedModel"):
        rollout_steps.publish_version(tmp_path, models)


# -- the rollout steps on a real model server ----------------------------------------------------


def test_good_version_rolls_out_and_is_promoted(
    workspace: Path, server: ServerProcess, model_server: ModelServer, built_models: dict[str, Path]
) -> None:
    output = cli(
        workspace,
        server,
        "publish",
        str(built_models["better"]),
        "--models-dir",
        str(workspace / "models" / MODEL_NAME),
    )
    assert output.strip().endswith("2")

    cli(workspace, server, "start", "--version", "2", "--canary-percent", "25")
    assert served(model_server) == {"available": [1, 2], STABLE_LABEL: 1, CANARY_LABEL: 2}
    status = cli(workspace, server, "status")
    assert "loaded [1, 2], stable -> 1, canary -> 2" in status
    assert "labels {'stable': 1, 'canary': 2}" in status
    assert traffic(workspace) == {"canary_label": CANARY_LABEL, "canary_percent": 25.0}
    state = rollout_steps.config_state(model_config.load(workspace / "models.config"), MODEL_NAME)
    assert state == rollout_steps.ConfigState(loaded=(1, 2), stable=1, canary=2)

    cli(workspace, server, "promote")
    eventually(
        lambda: served(model_server) == {"available": [2], STABLE_LABEL: 2, CANARY_LABEL: None}, "promoted"
    )
    assert traffic(workspace)["canary_percent"] == 0.0
    state = rollout_steps.config_state(model_config.load(workspace / "models.config"), MODEL_NAME)
    assert state == rollout_steps.ConfigState(loaded=(2,), stable=2, canary=None)


def test_rollback_works_at_every_step(
    workspace: Path, server: ServerProcess, model_server: ModelServer, built_models: dict[str, Path]
) -> None:
    """Interrupted after loading, after the canary label, and half-way through a promotion:
    rollback always ends with the previous version stable and the new one unloaded.
    Uses HandleReloadConfigRequest (--reload grpc) rather than polling."""
    stable = rollout_steps.config_state(model_config.load(workspace / "models.config"), MODEL_NAME).stable
    assert stable is not None
    models = workspace / "models" / MODEL_NAME
    config_path = workspace / "models.config"

    def reload_file() -> None:
        model_server.reload_config(model_config.load(config_path))

    # 1. Only loaded beside stable (a start stopped before the label moved).
    new = rollout_steps.publish_version(built_models["good"], models)
    config = model_config.load(config_path)
    model_config.add_version(config, MODEL_NAME, new)
    model_config.save(config, config_path)
    reload_file()
    eventually(lambda: new in served(model_server)["available"], f"version {new} loaded")  # type: ignore[operator]
    cli(workspace, server, "rollback", reload="grpc")
    assert served(model_server) == {"available": [stable], STABLE_LABEL: stable, CANARY_LABEL: None}

    # 2. A running canary.
    new = rollout_steps.publish_version(built_models["good"], models)
    cli(workspace, server, "start", "--version", str(new), reload="grpc")
    assert served(model_server)[CANARY_LABEL] == new
    cli(workspace, server, "rollback", reload="grpc")
    assert served(model_server) == {"available": [stable], STABLE_LABEL: stable, CANARY_LABEL: None}
    assert traffic(workspace)["canary_percent"] == 0.0

    # 3. Half-way through a promotion: stable already moved to the new version.
    new = rollout_steps.publish_version(built_models["good"], models)
    cli(workspace, server, "start", "--version", str(new), reload="grpc")
    config = model_config.load(config_path)
    model_config.set_label(config, MODEL_NAME, STABLE_LABEL, new)
    model_config.save(config, config_path)
    reload_file()
    eventually(lambda: model_server.label_version(STABLE_LABEL) == new, "stable moved")
    cli(workspace, server, "rollback", reload="grpc")
    assert served(model_server) == {"available": [stable], STABLE_LABEL: stable, CANARY_LABEL: None}

    # 4. Nothing in progress: a no-op that still sets the canary share to 0.
    output = cli(workspace, server, "rollback", reload="grpc")
    assert "no version being rolled out" in output


def test_refusals_leave_the_config_as_it_was(
    workspace: Path, server: ServerProcess, model_server: ModelServer, built_models: dict[str, Path]
) -> None:
    config_path = workspace / "models.config"
    store = rollout_steps.ConfigStore(config_path, MODEL_NAME, rollout_steps.ReloadMode.poll)
    switch = rollout_steps.TrafficSwitch(file=workspace / "traffic.json", settle_seconds=0)
    steps = rollout_steps.Rollout(store, [model_server], switch, timeout_seconds=60, say=lambda _: None)
    before = config_path.read_text()
    stable = steps.state().stable
    assert stable is not None

    with pytest.raises(RolloutStateError, match="already 'stable'"):
        steps.start(stable, 10)
    with pytest.raises(RolloutStateError, match="nothing to promote"):
        steps.promote()
    assert config_path.read_text() == before

    # A version whose files do not load: the wait stops at the load error, not at the timeout,
    # and rollback takes it out again.
    broken = rollout_steps.publish_version(built_models["broken"], workspace / "models" / MODEL_NAME)
    with pytest.raises(ModelServerError, match=f"version {broken} failed to load"):
        steps.start(broken, 10)
    assert model_server.label_version(CANARY_LABEL) is None
    steps.rollback()
    assert served(model_server) == {"available": [stable], STABLE_LABEL: stable, CANARY_LABEL: None}


def test_cli_maps_rollout_errors_to_exit_code_two(workspace: Path, server: ServerProcess) -> None:
    result = CliRunner().invoke(
        rollout.app,
        ["--config", str(workspace / "models.config"), "--model-server", server.grpc_address, "promote"],
    )
    assert result.exit_code == rollout.EXIT_ERROR
    assert "nothing to promote" in result.output


def test_the_readiness_probe_passes_only_for_an_available_labelled_version(server: ServerProcess) -> None:
    """The exact probe script of the rendered TF Serving Deployment, run against a real server's
    REST port (TF Serving answers the same URL with the same JSON field)."""
    import yaml

    objects = [item for item in yaml.safe_load_all(render("prod")) if item]
    probe = container(objects, "tf-serving")["readinessProbe"]["exec"]["command"]
    script = probe[2].replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{server.rest_port}")
    assert script != probe[2]

    def run_probe(label: str) -> int:
        environment = {**os.environ, "MODEL_NAME": MODEL_NAME, "READY_LABEL": label}
        return subprocess.run(
            [probe[0], probe[1], script], env=environment, timeout=30, check=False
        ).returncode

    assert run_probe(STABLE_LABEL) == 0
    assert run_probe("no-such-label") != 0


@pytest.mark.parametrize("broken", ["missing", "invalid", "unknown-model"])
def test_cli_crashes_are_exit_code_two_not_rolled_back(
    workspace: Path, server: ServerProcess, tmp_path: Path, broken: str
) -> None:
    """Issue 13: a bad or missing models.config, an unknown model or a gRPC error exited 1, the
    code of "rolled back cleanly", with a traceback."""
    config = tmp_path / "models.config"
    if broken == "invalid":
        config.write_text("model_config_list { config { name: ")
    elif broken == "unknown-model":
        config.write_text((workspace / "models.config").read_text())
    arguments = ["--config", str(config), "--model-server", server.grpc_address]
    if broken == "unknown-model":
        arguments += ["--model-name", "no_such_model"]
    result = CliRunner().invoke(rollout.app, [*arguments, "status"])
    assert result.exit_code == rollout.EXIT_ERROR, result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_config_rewrites_keep_the_file_mode(tmp_path: Path) -> None:
    """Issue 13: the atomic rewrite turned 0644 files into 0600 (mkstemp's mode)."""
    from common.files import write_text_atomically

    path = tmp_path / "models.config"
    path.write_text("old")
    path.chmod(0o644)
    write_text_atomically(path, "new")
    assert (path.read_text(), path.stat().st_mode & 0o777) == ("new", 0o644)
    fresh = tmp_path / "fresh.json"
    write_text_atomically(fresh, "{}")
    assert fresh.stat().st_mode & 0o044  # readable by others (umask permitting), not 0600
