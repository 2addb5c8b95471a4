"""Static checks of the production TF Serving files (Docker cannot run here).

- every flag the Dockerfiles pass exists in the pinned TF Serving version (tf_serving_flags.txt
  lists that version's flags and where the list comes from);
- each config file parses with TF Serving's own message types;
- paths agree: config files named by flags are copied into the image, models.config's base
  paths sit under the models mount, compose.yaml references files that exist.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message

from common import model_config, model_versions
from common.repository import REPO_ROOT

SERVING = REPO_ROOT / "serving"
FLAGS_FILE = SERVING / "tf_serving_flags.txt"
DOCKERFILES = {"gpu": SERVING / "Dockerfile", "cpu": SERVING / "Dockerfile.cpu"}
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
MODELS_MOUNT = "/models"  # where models/ is mounted in the container
CONFIG_MOUNT = "/config"  # where serving/ (the config files) lands in the container
# Files compose.yaml may reference before they exist, with the issue that writes them.
# --- TF Serving's BatchingParameters and MonitoringConfig ------------------------------------
# tensorflow-serving-api ships ModelServerConfig but not these two messages, so they are
# declared here with upstream's package, names and field numbers (session_bundle_config.proto,
# monitoring_config.proto). Text format only needs the names: an unknown or misspelled field
# fails to parse, as it would in the real server. A private pool keeps them from clashing with
# a future wheel that ships the real ones (used instead when importable).


def _declared_messages() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="aidetect_tests/tf_serving_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def add(
        message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: Any, label: int = optional
    ) -> None:
        entry = message.field.add(name=name, number=number, label=label)
        if isinstance(kind, str):
            entry.type, entry.type_name = field.TYPE_MESSAGE, kind
        else:
            entry.type = kind

    batching = file.message_type.add(name="BatchingParameters")
    add(batching, "max_batch_size", 1, ".google.protobuf.Int64Value")
    add(batching, "batch_timeout_micros", 2, ".google.protobuf.Int64Value")
    add(batching, "max_enqueued_batches", 3, ".google.protobuf.Int64Value")
    add(batching, "num_batch_threads", 4, ".google.protobuf.Int64Value")
    add(batching, "thread_pool_name", 5, ".google.protobuf.StringValue")
    add(batching, "allowed_batch_sizes", 6, field.TYPE_INT64, repeated)
    add(batching, "pad_variable_length_inputs", 7, field.TYPE_BOOL)
    add(batching, "enable_large_batch_splitting", 8, ".google.protobuf.BoolValue")
    add(batching, "max_execution_batch_size", 9, ".google.protobuf.Int64Value")
    prometheus = file.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, field.TYPE_BOOL)
    add(prometheus, "path", 2, field.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, ".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def batching_parameters_type() -> type[Message]:
    try:
        from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
    except ImportError:
        return _declared_messages()["BatchingParameters"]
    return BatchingParameters  # type: ignore[no-any-return]


def monitoring_config_type() -> type[Message]:
    try:
        from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
    except ImportError:
        return _declared_messages()["MonitoringConfig"]
    return MonitoringConfig  # type: ignore[no-any-return]


def parse_text_proto(path: Path, message_type: type[Message]) -> Any:
    message = message_type()
    text_format.Parse(path.read_text(), message)
    return message


# --- reading the Dockerfiles -------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # comments may sit inside a continuation
            continue
        pending += (" " if pending else "") + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction(path: Path, keyword: str) -> list[str]:
    return [arguments for found, arguments in dockerfile_instructions(path) if found == keyword]


def server_arguments(path: Path) -> list[str]:
    """The exec-form CMD: the arguments tensorflow_model_server starts with."""
    (entrypoint,) = instruction(path, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["tensorflow_model_server"]
    (command,) = instruction(path, "CMD")
    arguments = json.loads(command)
    assert isinstance(arguments, list) and all(isinstance(argument, str) for argument in arguments)
    return arguments


def flag_values(arguments: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for argument in arguments:
        match = re.fullmatch(r"--([a-z0-9_]+)(?:=(.*))?", argument)
        assert match, f"not a --flag[=value] argument: {argument!r}"
        name, value = match.group(1), match.group(2)
        assert name not in values, f"--{name} given twice"
        values[name] = "true" if value is None else value
    return values


def pinned_flags() -> tuple[str, set[str]]:
    version, flags = "", set()
    for line in FLAGS_FILE.read_text().splitlines():
        if line.startswith("# version:"):
            version = line.partition(":")[2].strip()
        elif line.strip() and not line.startswith("#"):
            flags.add(line.strip())
    assert version and flags, f"{FLAGS_FILE} names no version or no flags"
    return version, flags


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def model_server_services() -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in compose()["services"].items() if name.startswith("model-server")
    }


# --- the pinned version and its flags -----------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_is_the_official_image_at_the_pinned_version(variant: str) -> None:
    version, _ = pinned_flags()
    (base,) = instruction(DOCKERFILES[variant], "FROM")
    expected = f"tensorflow/serving:{version}" + ("-gpu" if variant == "gpu" else "")
    assert base == expected


def test_pinned_server_matches_the_serving_api_client() -> None:
    """Clients (tensorflow-serving-api) and exported models (tensorflow) use the server's version."""
    version, _ = pinned_flags()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = [pin for extra in project["optional-dependencies"].values() for pin in extra]
    assert f"tensorflow-serving-api=={version}" in pins
    assert f"tensorflow=={version}" in pins


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_every_flag_exists_in_the_pinned_version(variant: str) -> None:
    _, known = pinned_flags()
    unknown = set(flag_values(server_arguments(DOCKERFILES[variant]))) - known
    assert not unknown, f"flags not in TF Serving {pinned_flags()[0]}: {sorted(unknown)}"


def test_compose_passes_no_flag_the_pinned_version_lacks() -> None:
    _, known = pinned_flags()
    for name, service in model_server_services().items():
        command = service.get("command", [])
        arguments = command.split() if isinstance(command, str) else list(command)
        unknown = set(flag_values(arguments)) - known
        assert not unknown, f"{name}: {sorted(unknown)}"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_production_flags_are_set(variant: str) -> None:
    flags = flag_values(server_arguments(DOCKERFILES[variant]))
    assert flags["port"] == "8500"
    assert flags["rest_api_port"] == "8501"
    assert flags["model_config_file"] == f"{CONFIG_MOUNT}/models.config"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0, "0 reads the config only once"
    assert flags["enable_batching"] == "true"
    assert flags["enable_model_warmup"] == "true"
    assert flags["enable_grpc_healthcheck_service"] == "true"
    # models.config labels "stable" at start-up, before any version is AVAILABLE.
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert flags["batching_parameters_file"] == f"{CONFIG_MOUNT}/" + (
        "batching.config" if variant == "gpu" else "batching.cpu.config"
    )
    assert flags["monitoring_config_file"] == f"{CONFIG_MOUNT}/monitoring.config"
    if variant == "gpu":
        assert 0.0 < float(flags["per_process_gpu_memory_fraction"]) < 1.0
    else:
        assert "per_process_gpu_memory_fraction" not in flags


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_config_files_named_by_flags_are_copied_into_the_image(variant: str) -> None:
    dockerfile = DOCKERFILES[variant]
    copied: set[str] = set()
    for arguments in instruction(dockerfile, "COPY"):
        *sources, destination = arguments.split()
        assert destination.rstrip("/") == CONFIG_MOUNT
        for source in sources:
            assert (SERVING / source).is_file(), f"{dockerfile.name} copies missing {source}"
            copied.add(f"{CONFIG_MOUNT}/{source}")
    files = {
        value for name, value in flag_values(server_arguments(dockerfile)).items() if name.endswith("_file")
    }
    assert files <= copied, f"named by flags but not in the image: {sorted(files - copied)}"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_health_check_asks_for_the_configured_model_and_label(variant: str) -> None:
    (healthcheck,) = instruction(DOCKERFILES[variant], "HEALTHCHECK")
    entry = model_config.model(model_config.load(SERVING / "models.config"))
    assert f"/v1/models/{entry.name}/labels/{model_config.STABLE_LABEL}" in healthcheck
    assert model_config.STABLE_LABEL in entry.version_labels


# --- the config files parse with TF Serving's messages ------------------------------------------


def test_models_config_serves_the_newest_committed_version_labelled_stable() -> None:
    config = model_config.load(SERVING / "models.config")
    assert [entry.name for entry in config.model_config_list.config] == [model_config.DEFAULT_MODEL_NAME]
    entry = model_config.model(config)
    assert entry.model_platform == "tensorflow"
    committed = [
        version
        for version, folder in model_versions.version_folders(
            SERVING.parent / "models" / model_config.DEFAULT_MODEL_NAME
        ).items()
        if (folder / "saved_model.pb").is_file()
    ]
    assert committed, "no committed model version"
    assert model_config.served_versions(config) == [committed[-1]]
    assert dict(entry.version_labels) == {model_config.STABLE_LABEL: committed[-1]}


def test_models_config_is_in_the_form_the_config_tools_write() -> None:
    """common.model_config rewrites the file on label moves: no diff noise, no lost comments."""
    text = (SERVING / "models.config").read_text()
    assert model_config.dumps(model_config.parse(text)) == text


def test_models_config_base_paths_are_under_the_models_mount() -> None:
    for entry in model_config.load(SERVING / "models.config").model_config_list.config:
        assert entry.base_path == f"{MODELS_MOUNT}/{entry.name}"


@pytest.mark.parametrize("file_name", ["batching.config", "batching.cpu.config"])
def test_batching_config_parses_and_is_consistent(file_name: str) -> None:
    parameters = parse_text_proto(SERVING / file_name, batching_parameters_type())
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert parameters.HasField(field), f"{file_name} leaves {field} to the default"
    assert parameters.max_batch_size.value >= 1
    assert parameters.num_batch_threads.value >= 1
    assert parameters.max_enqueued_batches.value >= 1
    allowed = list(parameters.allowed_batch_sizes)
    if allowed:  # TF Serving's rules: increasing, and the last one is max_batch_size
        assert allowed == sorted(set(allowed))
        assert allowed[-1] == parameters.max_batch_size.value


def test_cpu_batching_runs_one_batch_at_a_time_on_two_cores() -> None:
    parameters = parse_text_proto(SERVING / "batching.cpu.config", batching_parameters_type())
    assert parameters.num_batch_threads.value == 1
    assert not parameters.allowed_batch_sizes, "padding computes dummy rows on a CPU"


def test_a_misspelled_batching_field_is_refused() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 8 }", batching_parameters_type()())


def test_monitoring_config_exposes_prometheus_at_the_contract_path() -> None:
    config = parse_text_proto(SERVING / "monitoring.config", monitoring_config_type())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


# --- compose.yaml ---------------------------------------------------------------------------------


def compose_references() -> list[str]:
    """Every repo path compose.yaml points at: build contexts, Dockerfiles, bind-mount sources."""
    references: list[str] = []
    for service in compose()["services"].values():
        build = service.get("build")
        if build:
            context = build["context"] if isinstance(build, dict) else build
            references.append(context)
            if isinstance(build, dict) and "dockerfile" in build:
                references.append(str(Path(context) / build["dockerfile"]))
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("."):
                references.append(source)
    return sorted({str(Path(reference)) for reference in references})


@pytest.mark.parametrize("reference", compose_references())
def test_compose_references_existing_files(reference: str) -> None:
    assert (REPO_ROOT / reference).exists(), f"compose.yaml references missing {reference}"


def test_compose_mounts_models_and_config_where_the_image_expects_them() -> None:
    for name, service in model_server_services().items():
        mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in service["volumes"]}
        assert mounts["./models"] == MODELS_MOUNT, name
        assert mounts["./serving"] == CONFIG_MOUNT, name
        dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
        assert dockerfile.resolve() in {path.resolve() for path in DOCKERFILES.values()}


def test_compose_ports_follow_the_contract() -> None:
    services = compose()["services"]
    for name, service in model_server_services().items():
        container_ports = {port.rsplit(":", 1)[1] for port in service["ports"]}
        assert container_ports == {"8500", "8501"}, name
    assert any(port.endswith(":8000") for port in services["gateway"]["ports"])
    # Issue 14: the gateway reads the model cards from the same models folder, read-only.
    gateway = services["gateway"]
    assert "./models:/models:ro" in gateway["volumes"]
    assert gateway["environment"]["AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY"] == "/models/ai_detector"
    # Issue 13: nothing is published beyond loopback (the gateway has no API key in compose).
    for name, service in services.items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name
    # The gateway reaches whichever model server runs by the one name both answer to.
    assert "model-server" in services["model-server-gpu"]["networks"]["default"]["aliases"]


def test_compose_configures_the_gateway_with_settings_it_has() -> None:
    from gateway.settings import ENV_PREFIX, Settings

    environment = compose()["services"]["gateway"]["environment"]
    for variable in environment:
        assert variable.startswith(ENV_PREFIX), variable
        assert variable.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, (
            f"no gateway setting {variable}"
        )
    settings = Settings(**{key.removeprefix(ENV_PREFIX).lower(): value for key, value in environment.items()})
    entry = model_config.model(model_config.load(SERVING / "models.config"))
    assert settings.model_server_address == "model-server:8500"
    assert settings.model_name == entry.name
    assert settings.version_label in entry.version_labels


# --- the local server reads the same files ---------------------------------------------------------


@pytest.mark.parametrize("file_name", ["batching.config", "batching.cpu.config"])
def test_local_server_reads_the_batching_config_the_same_way(file_name: str) -> None:
    from serving.batching import BatchingOptions

    parameters = parse_text_proto(SERVING / file_name, batching_parameters_type())
    options = BatchingOptions.from_file(SERVING / file_name)
    assert options.max_batch_size == parameters.max_batch_size.value
    assert options.batch_timeout_micros == parameters.batch_timeout_micros.value
    assert options.max_enqueued_batches == parameters.max_enqueued_batches.value
    assert options.num_batch_threads == parameters.num_batch_threads.value
    assert options.allowed_batch_sizes == tuple(parameters.allowed_batch_sizes)


def test_local_server_serves_prometheus_where_tf_serving_does() -> None:
    from serving.metrics import prometheus_path_from_monitoring_config

    path = prometheus_path_from_monitoring_config((SERVING / "monitoring.config").read_text())
    assert (
        path
        == parse_text_proto(SERVING / "monitoring.config", monitoring_config_type()).prometheus_config.path
    )


# --- Kubernetes manifests run the same server ------------------------------------------------------


def tf_serving_containers() -> list[tuple[str, dict[str, Any]]]:
    """(manifest, container) for every container of the TF Serving image under k8s/."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, manifest: str) -> None:
        if isinstance(node, dict):
            if str(node.get("image", "")).startswith("tensorflow/serving:"):
                found.append((manifest, node))
            for value in node.values():
                walk(value, manifest)
        elif isinstance(node, list):
            for value in node:
                walk(value, manifest)

    for path in sorted((REPO_ROOT / "k8s").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            walk(document, str(path.relative_to(REPO_ROOT)))
    return found


def test_kubernetes_runs_the_pinned_version_with_flags_it_has() -> None:
    containers = tf_serving_containers()
    if not containers:
        pytest.skip("no TF Serving container under k8s/")
    version, known = pinned_flags()
    for manifest, container in containers:
        assert container["image"].split(":", 1)[1] in (version, f"{version}-gpu"), manifest
        arguments = [argument for argument in container.get("args", []) if argument.startswith("--")]
        unknown = set(flag_values(arguments)) - known
        assert not unknown, f"{manifest}: flags not in TF Serving {version}: {sorted(unknown)}"
