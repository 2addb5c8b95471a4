"""Read and edit `serving/models.config`, TF Serving's text-format `ModelServerConfig`.

It is the single source of model names, base paths, version policy and labels for both the
real TF Serving and the local model server (ARCHITECTURE.md contract 3). Edits follow TF
Serving's rules: a version label may only point at a version the policy loads, so a label
move is always "load the version, wait until AVAILABLE, then move the label". Writes are
atomic (temporary file + rename) because model servers poll the file.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from common.files import write_text_atomically

DEFAULT_MODEL_NAME = "ai_detector"
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"


class ModelConfigError(ValueError):
    """The requested edit would make an invalid or unservable config."""


def parse(text: str) -> ModelServerConfig:
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        # TF Serving's words, so tools that grep its logs find ours too.
        raise ModelConfigError(f"Error parsing text-format {config.DESCRIPTOR.full_name}: {error}") from error
    return config


def load(path: Path) -> ModelServerConfig:
    return parse(Path(path).read_text())


def dumps(config: ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def save(config: ModelServerConfig, path: Path) -> None:
    """Write atomically so a polling model server never reads half a file."""
    path = Path(path)
    text = dumps(config)
    parse(text)  # round-trip check before anything is replaced
    write_text_atomically(path, text)


def model(config: ModelServerConfig, name: str = DEFAULT_MODEL_NAME) -> ModelConfig:
    for candidate in config.model_config_list.config:
        if candidate.name == name:
            return candidate
    known = [candidate.name for candidate in config.model_config_list.config]
    raise ModelConfigError(f"model {name!r} is not in the config (known: {known})")


def new_config(name: str, base_path: str, versions: list[int] | None = None) -> ModelServerConfig:
    """A config serving one TensorFlow model: the latest version, or `versions` (policy `specific`)."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    if versions:
        set_specific_versions(config, name, versions)
    return config


def served_versions(config: ModelServerConfig, name: str = DEFAULT_MODEL_NAME) -> list[int] | None:
    """The versions a `specific` policy loads, or None for `latest`/`all` (decided by the folder)."""
    entry = model(config, name)
    if entry.model_version_policy.WhichOneof("policy_choice") == "specific":
        return sorted(entry.model_version_policy.specific.versions)
    return None


def set_specific_versions(config: ModelServerConfig, name: str, versions: list[int]) -> None:
    """Policy `specific` with exactly these versions; labels pointing elsewhere are refused."""
    if not versions or any(version <= 0 for version in versions):
        raise ModelConfigError(f"versions must be positive integers, got {versions}")
    entry = model(config, name)
    stranded = {label: version for label, version in entry.version_labels.items() if version not in versions}
    if stranded:
        raise ModelConfigError(f"labels {stranded} point at versions that would no longer be loaded")
    entry.model_version_policy.specific.Clear()
    entry.model_version_policy.specific.versions.extend(sorted(set(versions)))


def add_version(config: ModelServerConfig, name: str, version: int) -> None:
    """Load `version` too (switches the policy to `specific`, keeping what is served now)."""
    current = served_versions(config, name) or []
    set_specific_versions(config, name, [*current, version])


def remove_version(config: ModelServerConfig, name: str, version: int) -> None:
    """Stop loading `version`; refused while a label still points at it."""
    entry = model(config, name)
    labels = [label for label, labelled in entry.version_labels.items() if labelled == version]
    if labels:
        raise ModelConfigError(f"version {version} still has labels {labels}; move them first")
    remaining = [served for served in (served_versions(config, name) or []) if served != version]
    set_specific_versions(config, name, remaining)


def set_label(config: ModelServerConfig, name: str, label: str, version: int) -> None:
    """Point `label` at `version`, which the policy must load (TF Serving's rule)."""
    loaded = served_versions(config, name)
    if loaded is not None and version not in loaded:
        raise ModelConfigError(
            f"label {label!r} cannot point at version {version}: it is not loaded ({loaded})"
        )
    model(config, name).version_labels[label] = version


def remove_label(config: ModelServerConfig, name: str, label: str) -> None:
    labels = model(config, name).version_labels
    if label in labels:
        del labels[label]
