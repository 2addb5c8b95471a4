"""Dataset layouts, splits (stratified, seed 42, near-duplicates together) and the data report."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    rng = np.random.default_rng(seed)
    # Smooth random pattern so the difference hash is well defined and distinct per seed.
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)


def test_manifest_layout(ai_vs_real_dir: Path) -> None:
    """Whatever version of the data: one example per manifest row, with its label, split and source."""
    with (ai_vs_real_dir / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    examples = data.load_examples(ai_vs_real_dir)
    assert len(examples) == len(rows) > 0
    for example, row in zip(examples, rows, strict=True):
        assert example.path == ai_vs_real_dir / row["path"]
        assert (example.label_name, example.split, example.source) == (
            row["label"],
            row["split"],
            row["source"],
        )
    counts = Counter((example.split, example.label_name) for example in examples)
    assert all(counts[(split, label)] > 0 for split in data.SPLITS for label in data.LABEL_NAMES)
    assert all(example.path.is_file() for example in examples[:50])


def test_kaggle_layout(tmp_path: Path) -> None:
    for index in range(6):
        write_image(tmp_path / "train_data" / f"{index}.jpg", index)
    lines = ["file_name,label"] + [f"train_data/{index}.jpg,{index % 2}" for index in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    examples = data.load_examples(tmp_path)
    assert [example.label for example in examples] == [0, 1, 0, 1, 0, 1]  # label 1 = AI
    assert examples[1].label_name == "ai"
    assert all(example.split is None for example in examples)


def test_folder_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "real" / "a.png", 1)
    write_image(tmp_path / "ai" / "nested" / "b.jpg", 2)
    (tmp_path / "ai" / "notes.txt").write_text("not an image")
    examples = data.load_examples(tmp_path)
    assert sorted((example.path.name, example.label_name) for example in examples) == [
        ("a.png", "real"),
        ("b.jpg", "ai"),
    ]


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a dataset layout"):
        data.load_examples(tmp_path)


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown label"):
        data.parse_label("maybe")


def test_split_is_stratified_deterministic_and_keeps_near_duplicates_together(tmp_path: Path) -> None:
    examples = []
    for index in range(60):
        label = index % 2
        path = tmp_path / data.LABEL_NAMES[label] / f"{index}.png"
        write_image(path, index)
        examples.append(data.Example(path=path, label=label))
    # Near duplicates of image 0: the same picture resized and re-encoded as JPEG.
    with Image.open(examples[0].path) as original:
        for copy in range(3):
            duplicate = tmp_path / "real" / f"0_copy{copy}.jpg"
            original.convert("RGB").resize((80 + 10 * copy, 60 + 8 * copy)).save(duplicate, quality=85)
            examples.append(data.Example(path=duplicate, label=0))

    first = data.assign_splits(examples, (0.7, 0.2, 0.1))
    second = data.assign_splits(examples, (0.7, 0.2, 0.1))
    assert [(item.path, item.split) for item in first] == [(item.path, item.split) for item in second]

    split_of = {item.path.name: item.split for item in first}
    assert len({split_of["0.png"], *(split_of[f"0_copy{copy}.jpg"] for copy in range(3))}) == 1

    per_label = Counter((item.label, item.split) for item in first)
    for label in (0, 1):
        total = sum(count for (counted_label, _), count in per_label.items() if counted_label == label)
        assert abs(per_label[(label, "train")] / total - 0.7) < 0.1
        assert per_label[(label, "test")] >= 1


def test_near_duplicate_clusters_by_hamming_distance() -> None:
    base = 0x0F0F_F0F0_1234_5678
    clusters = data.near_duplicate_clusters(
        [base, base ^ 0b1011, base ^ 0xFFFF_0000_0000_0000, base ^ (0b11111 << 40)]
    )
    assert clusters[0] == clusters[1]  # 3 bits apart
    assert clusters[2] != clusters[0]  # 16 bits apart
    assert clusters[3] != clusters[0]  # 5 bits apart: over the 4-bit limit


def test_mixed_label_clusters_are_dropped(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 7)
    write_image(tmp_path / "b.png", 8)
    examples = [
        data.Example(path=tmp_path / "a.png", label=0),
        data.Example(path=tmp_path / "a.png", label=1),
        data.Example(path=tmp_path / "b.png", label=1),
    ]
    assert [item.path.name for item in data.assign_splits(examples)] == ["b.png"]


def test_report_counts_and_sizes(tmp_path: Path) -> None:
    write_image(tmp_path / "real" / "a.png", 1, size=(40, 30))
    write_image(tmp_path / "ai" / "b.png", 2, size=(50, 50))
    report = data.data_report(data.with_splits(data.load_examples(tmp_path)))
    assert report["total"] == 2
    assert report["per_class"] == {"ai": 1, "real": 1}
    assert report["width"] == {"min": 40, "median": 45.0, "max": 50, "mean": 45.0}
    assert report["square_fraction_per_class"] == {"real": 0.0, "ai": 1.0}


def test_limit_per_split_is_balanced(ai_vs_real_dir: Path) -> None:
    limited = data.limit_per_split(data.load_examples(ai_vs_real_dir), 10)
    counts = Counter((example.split, example.label) for example in limited)
    assert all(counts[(split, label)] == 5 for split in data.SPLITS for label in (0, 1))


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    write_image(tmp_path / "real" / "a.png", 1)
    write_image(tmp_path / "ai" / "b.png", 2)
    before = data.dataset_fingerprint(data.load_examples(tmp_path))
    write_image(tmp_path / "ai" / "b.png", 3)
    assert data.dataset_fingerprint(data.load_examples(tmp_path)) != before
