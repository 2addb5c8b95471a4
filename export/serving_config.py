"""Edit `serving/models.config` from the command line: `python -m export.serving_config --help`.

A thin CLI over common/model_config.py (which owns TF Serving's rules: a label may only point
at a version the policy loads; atomic writes), for people and for the rollout tooling:

    python -m export.serving_config show
    python -m export.serving_config add-version 2            # load version 2 beside what is served
    python -m export.serving_config set-label canary 2
    python -m export.serving_config set-label stable 2
    python -m export.serving_config remove-label canary
    python -m export.serving_config remove-version 1
    python -m export.serving_config set-policy specific --versions 2
    python -m export.serving_config set-policy latest --num-versions 1

`add-version` refuses a version that has no exported folder under --models-dir (the config's
base_path is the path inside the serving container, e.g. /models/ai_detector, so the local
folder is given separately), unless --allow-missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from common import model_config
from common.model_config import DEFAULT_MODEL_NAME, ModelConfigError, ModelServerConfig

DEFAULT_CONFIG = Path("serving/models.config")
POLICIES = ("specific", "latest", "all")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ConfigOption = Annotated[Path, typer.Option("--config", help="TF Serving ModelServerConfig text file")]
NameOption = Annotated[str, typer.Option("--name", help="Model name in the config")]


def describe(config: ModelServerConfig, name: str) -> str:
    """One line per model: name, base path, policy and versions, labels."""
    lines = []
    for entry in config.model_config_list.config:
        if name and entry.name != name:
            continue
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        if policy == "specific":
            policy_text = f"specific {sorted(entry.model_version_policy.specific.versions)}"
        elif policy == "latest":
            policy_text = f"latest {entry.model_version_policy.latest.num_versions or 1}"
        else:
            policy_text = policy
        labels = ", ".join(f"{label}={version}" for label, version in sorted(entry.version_labels.items()))
        lines.append(f"{entry.name}: {entry.base_path} | policy {policy_text} | labels {labels or '-'}")
    return "\n".join(lines)


def set_policy(
    config: ModelServerConfig,
    name: str,
    policy: str,
    versions: list[int] | None = None,
    num_versions: int = 1,
) -> None:
    """Version policy `specific` (exactly `versions`), `latest` (`num_versions` newest) or `all`."""
    entry = model_config.model(config, name)
    if policy == "specific":
        model_config.set_specific_versions(config, name, versions or [])
    elif policy == "latest":
        if num_versions < 1:
            raise ModelConfigError(f"--num-versions must be at least 1, got {num_versions}")
        if entry.version_labels:
            # Which versions `latest` loads depends on the folder, so a label could point at an
            # unloaded version, which TF Serving refuses.
            labels = dict(entry.version_labels)
            raise ModelConfigError(
                f"labels {labels} need a policy that names their versions; remove them first"
            )
        entry.model_version_policy.latest.num_versions = num_versions
    elif policy == "all":
        entry.model_version_policy.all.SetInParent()
    else:
        raise ModelConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")


def _edit(path: Path, name: str, change: Callable[[ModelServerConfig], None]) -> None:
    """Load, change, save atomically, print the result; config errors exit with code 1."""
    try:
        config = model_config.load(path)
        change(config)
        model_config.save(config, path)
    except (ModelConfigError, FileNotFoundError) as error:
        typer.echo(f"{path}: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(describe(config, name))


@app.command()
def show(config: ConfigOption = DEFAULT_CONFIG, name: Annotated[str, typer.Option()] = "") -> None:
    """Print each model's base path, version policy and labels."""
    try:
        typer.echo(describe(model_config.load(config), name))
    except (ModelConfigError, FileNotFoundError) as error:
        typer.echo(f"{config}: {error}", err=True)
        raise typer.Exit(code=1) from error


@app.command("add-version")
def add_version(
    version: int,
    config: ConfigOption = DEFAULT_CONFIG,
    name: NameOption = DEFAULT_MODEL_NAME,
    models_dir: Annotated[
        Path, typer.Option(help="Local model base folder holding <name>/<version>/")
    ] = Path("models"),
    allow_missing: Annotated[bool, typer.Option(help="Add even if models-dir has no such version")] = False,
) -> None:
    """Load VERSION too (policy becomes `specific`, keeping the versions served now)."""
    if not allow_missing and not (models_dir / name / str(version) / "saved_model.pb").is_file():
        typer.echo(
            f"{models_dir / name / str(version)} holds no exported SavedModel (use --allow-missing)", err=True
        )
        raise typer.Exit(code=1)
    _edit(config, name, lambda loaded: model_config.add_version(loaded, name, version))


@app.command("remove-version")
def remove_version(
    version: int, config: ConfigOption = DEFAULT_CONFIG, name: NameOption = DEFAULT_MODEL_NAME
) -> None:
    """Stop loading VERSION (refused while a label points at it)."""
    _edit(config, name, lambda loaded: model_config.remove_version(loaded, name, version))


@app.command("set-label")
def set_label(
    label: str, version: int, config: ConfigOption = DEFAULT_CONFIG, name: NameOption = DEFAULT_MODEL_NAME
) -> None:
    """Point LABEL (e.g. stable, canary) at VERSION, which the policy must load."""
    _edit(config, name, lambda loaded: model_config.set_label(loaded, name, label, version))


@app.command("remove-label")
def remove_label(
    label: str, config: ConfigOption = DEFAULT_CONFIG, name: NameOption = DEFAULT_MODEL_NAME
) -> None:
    """Delete LABEL."""
    _edit(config, name, lambda loaded: model_config.remove_label(loaded, name, label))


@app.command("set-policy")
def set_policy_command(
    policy: Annotated[str, typer.Argument(help="specific | latest | all")],
    versions: Annotated[str, typer.Option(help="For specific: comma-separated versions")] = "",
    num_versions: Annotated[int, typer.Option(help="For latest: how many of the newest versions")] = 1,
    config: ConfigOption = DEFAULT_CONFIG,
    name: NameOption = DEFAULT_MODEL_NAME,
) -> None:
    """Set the version policy."""
    try:
        chosen = [int(part) for part in versions.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--versions expects comma-separated integers, got {versions!r}") from None
    _edit(config, name, lambda loaded: set_policy(loaded, name, policy, chosen, num_versions))


if __name__ == "__main__":
    app()
