"""Which batch sizes the warmup covers, read from TF Serving batching configs."""

from __future__ import annotations

from pathlib import Path

from export.warmup import SERVING_FOLDER, batch_sizes_from_batching_config


def test_allowed_batch_sizes_are_used_with_batch_one_added(tmp_path: Path) -> None:
    config = tmp_path / "batching.config"
    config.write_text(
        "max_batch_size { value: 32 }\n# allowed_batch_sizes: 3 (a comment)\nallowed_batch_sizes: 8\n"
        "allowed_batch_sizes: 32\nallowed_batch_sizes: 16\n"
    )
    assert batch_sizes_from_batching_config(config) == [1, 8, 16, 32]


def test_without_allowed_sizes_powers_of_two_up_to_the_maximum(tmp_path: Path) -> None:
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 12 }\nbatch_timeout_micros { value: 1000 }\n")
    assert batch_sizes_from_batching_config(config) == [1, 2, 4, 8, 12]


def test_missing_or_empty_config_gives_none(tmp_path: Path) -> None:
    assert batch_sizes_from_batching_config(tmp_path / "absent.config") is None
    (tmp_path / "empty.config").write_text("num_batch_threads { value: 2 }\n")
    assert batch_sizes_from_batching_config(tmp_path / "empty.config") is None


def test_the_project_batching_configs_parse() -> None:
    for name in ("batching.cpu.config", "batching.config"):
        path = SERVING_FOLDER / name
        if path.is_file():
            sizes = batch_sizes_from_batching_config(path)
            assert sizes and sizes[0] == 1 and sizes == sorted(sizes), name
