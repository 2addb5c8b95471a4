"""TF Serving's rules for a ModelServerConfig: which configs it accepts, where a base path points
(the local server's prefix map), and which versions a model's version policy asks for.

Pure functions of the config and the folders on disk; serving/model_manager.py applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common import model_config
from serving.errors import InvalidArgumentError


def parse_prefix_map(text: str) -> list[tuple[str, Path]]:
    """`/models=./models,/other=/data/other` -> [(prefix, local folder)], longest prefix first."""
    pairs: list[tuple[str, Path]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, separator, local = item.partition("=")
        if not separator or not prefix or not local:
            raise ValueError(f"model base path prefix map entry {item!r} is not PREFIX=FOLDER")
        pairs.append((prefix.rstrip("/") or "/", Path(local).expanduser().resolve()))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


FILE_URI = "file://"


def map_base_path(base_path: str, prefix_map: Sequence[tuple[str, Path]]) -> Path:
    """The local folder of a config's base path.

    Without a prefix map, the path as given (TF Serving's behaviour). With one, only paths under
    a mapped prefix are served, and they must stay inside its folder after `..` and symbolic links
    are resolved: a config (from a file or HandleReloadConfigRequest) cannot point the server at
    any other folder, since loading a SavedModel runs its graph."""
    if base_path.startswith(FILE_URI):  # TF Serving reads file:// URIs from the file system
        base_path = base_path[len(FILE_URI) :]
    elif "://" in base_path:
        raise InvalidArgumentError(
            f"base path {base_path}: only local paths and file:// URIs are served here"
        )
    if not prefix_map:
        return Path(base_path)
    for prefix, local in prefix_map:
        if base_path == prefix or base_path.startswith(prefix.rstrip("/") + "/"):
            mapped = (local / base_path[len(prefix) :].lstrip("/")).resolve()
            if mapped == local or mapped.is_relative_to(local):
                return mapped
            raise InvalidArgumentError(f"base path {base_path} leaves the folder mapped to {prefix}")
    roots = ", ".join(prefix for prefix, _ in prefix_map)
    raise InvalidArgumentError(
        f"base path {base_path} is outside the mapped roots ({roots}; --model_base_path_prefix_map)"
    )


def aspired_versions(model: model_config.ModelConfig, on_disk: dict[int, Path]) -> set[int]:
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return wanted & set(on_disk)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(sorted(on_disk)[-count:])


def validate_config(config: model_config.ModelServerConfig) -> None:
    """TF Serving's checks of a ModelServerConfig (ServerCore); an empty config is valid (no models)."""
    if config.WhichOneof("config") not in ("model_config_list", None):
        raise InvalidArgumentError(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    for entry in config.model_config_list.config:
        if not entry.name:
            raise InvalidArgumentError("every model in the config needs a name")
        if entry.name in seen:
            raise InvalidArgumentError(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not entry.base_path:
            raise InvalidArgumentError(f"model {entry.name} has no base_path")
        if not (entry.base_path.startswith("/") or "://" in entry.base_path):
            raise InvalidArgumentError(
                f"Expected model {entry.name} to have an absolute path or URI; "
                f"got base_path()={entry.base_path}"
            )
        if entry.model_type and entry.model_platform:
            raise InvalidArgumentError("Illegal setting both model_type (deprecated) and model_platform.")
        if entry.model_platform not in ("", "tensorflow"):
            raise InvalidArgumentError(
                f"model {entry.name}: platform {entry.model_platform!r} is not supported (only 'tensorflow')"
            )
