"""TF Serving's version-folder rule, once: a model's versions are its integer-named folders.

`<base_path>/<version>/saved_model.pb`: a folder named with ASCII digits only is a version
(`.tmp-3`, `3.partial`, `v3` and files are not; neither is "²", which `str.isdigit()` accepts
and `int()` refuses). Export picks the next number with it, the local model server polls with
it, the rollout and the benchmarks list versions with it.
"""

from __future__ import annotations

import re
from pathlib import Path

_VERSION_NAME = re.compile(r"[0-9]+")


def is_version_name(name: str) -> bool:
    return _VERSION_NAME.fullmatch(name) is not None


def version_folders(model_dir: Path) -> dict[int, Path]:
    """{version: folder}, ascending; empty when `model_dir` is missing or unreadable."""
    try:
        children = list(Path(model_dir).iterdir())
    except OSError:
        return {}
    found = {int(child.name): child for child in children if is_version_name(child.name) and child.is_dir()}
    return dict(sorted(found.items()))


def versions(model_dir: Path) -> list[int]:
    return list(version_folders(model_dir))


def next_version(model_dir: Path) -> int:
    """One more than the highest version (1 for a new model)."""
    return max(versions(model_dir), default=0) + 1
