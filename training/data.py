"""Datasets: read the three supported layouts, split them, and report what is in them.

Layouts (auto-detected by :func:`load_examples`):
- a manifest CSV with `path,label,split,source,...` (as ../shared/data/ai-vs-real);
- the Kaggle "AI vs. Human-Generated Images" layout: `train.csv` with `file_name,label`, label 1 = AI;
- folder-per-class: `real/` and `ai/` under a root.

Where no split is given, :func:`assign_splits` draws a stratified split (seed 42) in which
near-duplicate images (64-bit difference hash within 4 bits) always land on the same side.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

LABEL_NAMES = ("real", "ai")  # index = the model's target: 1 means AI-generated
LABEL_INDEX = {name: index for index, name in enumerate(LABEL_NAMES)}
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_SEED = 42
NEAR_DUPLICATE_BITS = 4


@dataclass(frozen=True)
class Example:
    """One labelled image file."""

    path: Path
    label: int  # 1 = AI-generated, 0 = real
    split: str | None = None  # "train" | "val" | "test", or None until assigned
    source: str = "unknown"
    style: str = "unknown"  # "photo" or "art" where the manifest says
    generator: str = ""  # for AI images, as far as the source says

    @property
    def label_name(self) -> str:
        return LABEL_NAMES[self.label]


def parse_label(value: str) -> int:
    """Accept `ai`/`real`, `1`/`0`, `fake`/`human` style labels."""
    normalized = value.strip().lower()
    if normalized in ("1", "ai", "fake", "generated", "synthetic"):
        return 1
    if normalized in ("0", "real", "human", "authentic"):
        return 0
    raise ValueError(f"unknown label {value!r}: expected ai/real or 1/0")


def load_manifest(manifest_csv: Path) -> list[Example]:
    """The manifest layout: `path` relative to the CSV's folder, `label`, optional `split`, `source`."""
    root = manifest_csv.parent
    examples = []
    with manifest_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            split = (row.get("split") or "").strip() or None
            if split is not None and split not in SPLITS:
                raise ValueError(f"{manifest_csv}: unknown split {split!r} for {row['path']}")
            examples.append(
                Example(
                    path=root / row["path"],
                    label=parse_label(row["label"]),
                    split=split,
                    source=(row.get("source") or "").strip() or "unknown",
                    style=(row.get("style") or "").strip() or "unknown",
                    generator=(row.get("generator") or "").strip(),
                )
            )
    return examples


def load_kaggle(train_csv: Path) -> list[Example]:
    """The Kaggle layout: `file_name,label` (1 = AI), file names relative to the CSV's folder."""
    root = train_csv.parent
    with train_csv.open(newline="") as handle:
        return [
            Example(path=root / row["file_name"], label=parse_label(row["label"]), source="kaggle")
            for row in csv.DictReader(handle)
        ]


def load_folders(root: Path) -> list[Example]:
    """Folder-per-class: every image under `root/real/` and `root/ai/` (recursively)."""
    examples = []
    for label_name in LABEL_NAMES:
        folder = root / label_name
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                examples.append(Example(path=path, label=LABEL_INDEX[label_name], source=root.name))
    return examples


def load_examples(data: Path) -> list[Example]:
    """Detect the layout of `data` (a folder or a CSV file) and load it."""
    if data.is_file():
        header = data.open(newline="").readline()
        return load_kaggle(data) if "file_name" in header else load_manifest(data)
    if (data / "manifest.csv").is_file():
        return load_manifest(data / "manifest.csv")
    if (data / "train.csv").is_file():
        return load_kaggle(data / "train.csv")
    if (data / "real").is_dir() and (data / "ai").is_dir():
        return load_folders(data)
    raise ValueError(
        f"{data}: no manifest.csv, no Kaggle train.csv, and no real/ + ai/ folders: "
        "not a dataset layout this project reads"
    )


def difference_hash(path: Path) -> int:
    """64-bit difference hash (dHash) of an image: robust to re-encoding and resizing."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def near_duplicate_clusters(hashes: Sequence[int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[int]:
    """Cluster id per hash: union of all pairs within `max_bits` Hamming distance.

    Split into `max_bits + 1` bands: two hashes within `max_bits` bits agree exactly on at
    least one band (pigeonhole), so only hashes sharing a band are compared.
    """
    parent = list(range(len(hashes)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    band_count = max_bits + 1
    band_edges = np.linspace(0, 64, band_count + 1).astype(int)
    for band in range(band_count):
        low, high = int(band_edges[band]), int(band_edges[band + 1])
        buckets: dict[int, list[int]] = defaultdict(list)
        for index, value in enumerate(hashes):
            buckets[(value >> low) & ((1 << (high - low)) - 1)].append(index)
        for members in buckets.values():
            for position, first in enumerate(members):
                for second in members[position + 1 :]:
                    if (hashes[first] ^ hashes[second]).bit_count() <= max_bits:
                        parent[find(first)] = find(second)
    return [find(index) for index in range(len(hashes))]


def assign_splits(
    examples: Sequence[Example],
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = DEFAULT_SEED,
) -> list[Example]:
    """Stratified split by label, keeping near-duplicate clusters on one side.

    `fractions` is (train, val) or (train, val, test). Clusters holding both labels are
    dropped (the same picture cannot be both real and AI). Deterministic for a seed.
    """
    if len(fractions) not in (2, 3) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 2 or 3 numbers summing to 1, got {fractions}")
    split_names = SPLITS[: len(fractions)]
    cluster_ids = near_duplicate_clusters([difference_hash(example.path) for example in examples])
    clusters: dict[int, list[Example]] = defaultdict(list)
    for example, cluster_id in zip(examples, cluster_ids, strict=True):
        clusters[cluster_id].append(example)

    rng = random.Random(seed)
    assigned: list[Example] = []
    for label in (0, 1):
        label_clusters = [
            members
            for _, members in sorted(clusters.items())
            if {member.label for member in members} == {label}
        ]
        rng.shuffle(label_clusters)
        total = sum(len(members) for members in label_clusters)
        targets = [fraction * total for fraction in fractions]
        filled = [0] * len(fractions)
        for members in label_clusters:
            # Put the cluster where it is most behind its target share.
            split_index = max(range(len(fractions)), key=lambda index: targets[index] - filled[index])
            filled[split_index] += len(members)
            assigned.extend(replace(member, split=split_names[split_index]) for member in members)
    return assigned


def with_splits(examples: Sequence[Example], fractions: Sequence[float] = (0.8, 0.2)) -> list[Example]:
    """Keep given splits; draw them (seed 42, near-duplicate aware) only when none is given."""
    if all(example.split for example in examples):
        return list(examples)
    if any(example.split for example in examples):
        raise ValueError("some examples have a split and some do not: give all or none")
    return assign_splits(examples, fractions)


def by_split(examples: Iterable[Example], split: str) -> list[Example]:
    return [example for example in examples if example.split == split]


def calibration_indices(examples: Sequence[Example], exclude_source: str | None = None) -> list[int]:
    """Where temperature and threshold are fitted, the one rule: the photo-like validation images
    (of every source but `exclude_source`) when they hold both labels, else all of them. Art and
    ImageNet-only photos would set the threshold for the easy painting-vs-photo case."""
    validation = [
        index
        for index, example in enumerate(examples)
        if example.split == "val" and example.source != exclude_source
    ]
    photo = [index for index in validation if examples[index].style == "photo"]
    return photo if len({examples[index].label for index in photo}) == 2 else validation


def limit_per_split(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """At most `limit` examples per split, half of each label (deterministic): for smoke runs."""
    if not limit:
        return list(examples)
    chosen = []
    for split_name in SPLITS:
        for label in (0, 1):
            share = limit // 2 + (limit % 2 if label == 0 else 0)
            chosen.extend(
                [example for example in by_split(examples, split_name) if example.label == label][:share]
            )
    return chosen


def dataset_fingerprint(examples: Sequence[Example]) -> str:
    """SHA-256 over every file's bytes, label and split, in path order: names the data a model saw."""
    digest = hashlib.sha256()
    for example in sorted(examples, key=lambda item: str(item.path)):
        digest.update(f"{example.path.name}|{example.label}|{example.split}|".encode())
        digest.update(hashlib.sha256(example.path.read_bytes()).digest())
    return digest.hexdigest()


def data_report(examples: Sequence[Example]) -> dict[str, object]:
    """Counts per class, source and split, and image size statistics (from headers only)."""
    widths, heights = [], []
    formats: Counter[str] = Counter()
    for example in examples:
        with Image.open(example.path) as image:
            widths.append(image.size[0])
            heights.append(image.size[1])
            formats[image.format or "unknown"] += 1

    def counts(key: str) -> dict[str, int]:
        return dict(sorted(Counter(key_of(example, key) for example in examples).items()))

    def size_stats(values: list[int]) -> dict[str, float]:
        array = np.asarray(values)
        return {
            "min": int(array.min()),
            "median": float(np.median(array)),
            "max": int(array.max()),
            "mean": round(float(array.mean()), 1),
        }

    return {
        "total": len(examples),
        "per_class": counts("label"),
        "per_split": counts("split"),
        "per_split_and_class": counts("split_label"),
        "per_source_and_class": counts("source_label"),
        "formats": dict(sorted(formats.items())),
        "width": size_stats(widths) if widths else {},
        "height": size_stats(heights) if heights else {},
        "square_fraction_per_class": {
            name: _square_fraction(examples, widths, heights, index) for index, name in enumerate(LABEL_NAMES)
        },
    }


def _square_fraction(examples: Sequence[Example], widths: list[int], heights: list[int], label: int) -> float:
    """Share of square images in a class: a resize without cropping would leak it."""
    squares = [
        width == height
        for example, width, height in zip(examples, widths, heights, strict=True)
        if example.label == label
    ]
    return round(sum(squares) / len(squares), 3) if squares else 0.0


def key_of(example: Example, key: str) -> str:
    if key == "label":
        return example.label_name
    if key == "split":
        return example.split or "unassigned"
    if key == "split_label":
        return f"{example.split or 'unassigned'}/{example.label_name}"
    if key == "source_label":
        return f"{example.source}/{example.label_name}"
    raise ValueError(f"unknown key {key}")


cli = typer.Typer(help="Dataset tools: report what a dataset holds and how it splits.")


@cli.command()
def report(
    data: Annotated[Path, typer.Argument(help="Dataset folder or CSV (manifest, Kaggle or real/ + ai/)")],
    output: Annotated[Path | None, typer.Option(help="Write the report JSON here too")] = None,
) -> None:
    """Print counts per class/source/split and image sizes."""
    examples = with_splits(load_examples(data))
    result = data_report(examples)
    text = json.dumps(result, indent=2)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


@cli.command()
def split(
    data: Annotated[Path, typer.Argument(help="Dataset folder or CSV without splits")],
    output: Annotated[Path, typer.Option(help="Manifest CSV to write (path,label,split,source)")],
    fractions: Annotated[str, typer.Option(help="train,val[,test] fractions")] = "0.8,0.2",
) -> None:
    """Draw a stratified, near-duplicate-aware split (seed 42) and write it as a manifest."""
    shares = [float(value) for value in fractions.split(",")]
    examples = assign_splits(load_examples(data), shares)
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "source"])
        for example in examples:
            relative = os.path.relpath(example.path.resolve(), output.parent.resolve())
            writer.writerow([Path(relative).as_posix(), example.label_name, example.split, example.source])
    print(json.dumps(data_report(examples)["per_split_and_class"], indent=2))


if __name__ == "__main__":
    cli()
