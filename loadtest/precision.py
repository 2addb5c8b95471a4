"""Mixed precision the TF Serving way, decided by accuracy: `python -m loadtest.benchmark mixed-precision`.

TF Serving runs each SavedModel in a TF1 Session configured by `--tensorflow_session_config_file`;
`serving/session_config.cpu.pbtxt` switches on oneDNN's bfloat16 automatic mixed precision (CPUs
with AVX512-BF16 or AMX), `serving/session_config.gpu.pbtxt` the float16 one (GPUs). The rewrite
changes the numbers, so whether a model may be served under it is decided on labelled images, not
by a probability tolerance: the model runs through the local server's own runtime
(`serving.runtime.load_runtime`, the Session code path of TF Serving), once in fp32 and once with
the session config, on

- the validation split, the test split, and the LOSO images (train + val of the photo-like sources
  holding both labels, as `training.loso` evaluates them);
- accuracy of the served `label`, ROC-AUC of the served `probability`, label flips against fp32;
- the rule (issue 17): on every set, accuracy within 0.5 points, ROC-AUC within 0.005, and at most
  1% of the images flipped; a model that misses it is refused, with the measured numbers;
- speed per batch size, fp32 and the session config alternating (A B A B), the ratio per pair.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import signatures

BEGIN_MARKER = "<!-- mixed-precision:begin -->"
END_MARKER = "<!-- mixed-precision:end -->"
FP32 = "fp32"
MIXED = "mixed"


@dataclass(frozen=True)
class PrecisionRule:
    """Issue 17's bar, per evaluation set, mixed precision against fp32."""

    accuracy_points: float = 0.5  # |accuracy difference| in percentage points
    roc_auc: float = 0.005  # |ROC-AUC difference|
    flipped_fraction: float = 0.01  # labels that differ from fp32's, of all images

    def misses(self, entry: dict[str, Any]) -> list[str]:
        """What `entry` (one set's figures) misses of the rule, in words; empty when it passes."""
        missed = []
        if abs(entry["accuracy_points_difference"]) > self.accuracy_points:
            missed.append(f"accuracy {entry['accuracy_points_difference']:+.2f} points")
        if abs(entry["roc_auc_difference"]) > self.roc_auc:
            missed.append(f"ROC-AUC {entry['roc_auc_difference']:+.4f}")
        if entry["flipped_fraction"] > self.flipped_fraction:
            missed.append(f"{entry['flipped']} labels flipped ({100 * entry['flipped_fraction']:.2f}%)")
        return missed


def evaluation_sets(data: Path, limit: int | None = None) -> dict[str, list[Any]]:
    """{set name: examples}: the validation split, the test split, and the LOSO images (with
    `limit`, the first that many of every source, label and split: a small, complete subset)."""
    from training.data import by_split, load_examples
    from training.loso import limit_per_source, loso_sources

    examples = limit_per_source(load_examples(data), limit)
    sources = set(loso_sources(examples))
    return {
        "validation": by_split(examples, "val"),
        "test": by_split(examples, "test"),
        "loso": [e for e in examples if e.source in sources and e.split in ("train", "val")],
    }


class SessionSignature:
    """`serving_default` of a version as the local model server runs it, callable like a loaded
    SavedModel's signature (so export.measure's run_images and speed, the one timing loop, run it)."""

    def __init__(self, version_dir: Path, session_config: Path | None) -> None:
        from serving.runtime import load_runtime, read_session_config

        config = read_session_config(session_config) if session_config is not None else None
        self.runtime = load_runtime(version_dir, session_config=config)

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        return self.runtime.run(
            signatures.SERVING_SIGNATURE, {name: np.asarray(value) for name, value in inputs.items()}
        )

    def close(self) -> None:
        self.runtime.close()


def set_figures(outputs: dict[str, dict[str, np.ndarray]], labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, ROC-AUC of fp32 and of mixed precision on one set, their differences, the flips."""
    from sklearn.metrics import roc_auc_score

    figures: dict[str, Any] = {"images": int(labels.size)}
    for mode in (FP32, MIXED):
        served_labels = outputs[mode][signatures.OUTPUT_LABEL].reshape(-1)
        figures[f"{mode}_accuracy"] = float(np.mean(served_labels == labels))
        figures[f"{mode}_roc_auc"] = float(
            roc_auc_score(labels, outputs[mode][signatures.OUTPUT_PROBABILITY].reshape(-1))
        )
    flipped = int(np.sum(outputs[FP32][signatures.OUTPUT_LABEL] != outputs[MIXED][signatures.OUTPUT_LABEL]))
    probability_difference = np.abs(
        outputs[FP32][signatures.OUTPUT_PROBABILITY] - outputs[MIXED][signatures.OUTPUT_PROBABILITY]
    )
    return figures | {
        "accuracy_points_difference": 100.0 * (figures[f"{MIXED}_accuracy"] - figures[f"{FP32}_accuracy"]),
        "roc_auc_difference": figures[f"{MIXED}_roc_auc"] - figures[f"{FP32}_roc_auc"],
        "flipped": flipped,
        "flipped_fraction": flipped / max(1, labels.size),
        "max_abs_probability_difference": float(probability_difference.max(initial=0.0)),
    }


def paired_speed(
    runs: dict[str, SessionSignature], images: np.ndarray, batch_sizes: Sequence[int], pairs: int
) -> dict[str, Any]:
    """Per batch size, `pairs` A B pairs (order alternating), images/s of each and mixed/fp32 per pair."""
    from export.measure import speed

    results: dict[str, Any] = {}
    for batch_size in batch_sizes:
        rates: dict[str, list[float]] = {FP32: [], MIXED: []}
        for index in range(pairs):
            for mode in (FP32, MIXED) if index % 2 == 0 else (MIXED, FP32):
                measured = speed(runs[mode], images, [batch_size], rounds=2, seconds_per_round=1.0)
                rates[mode].append(measured[str(batch_size)]["images_per_second"])
        ratios = [mixed / fp32 for mixed, fp32 in zip(rates[MIXED], rates[FP32], strict=True)]
        results[str(batch_size)] = rates | {
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return results


def check_model(
    version_dir: Path,
    session_config: Path,
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    speed_images: np.ndarray,
    batch_sizes: Sequence[int],
    pairs: int,
    rule: PrecisionRule,
) -> dict[str, Any]:
    """The rule's verdict for one version under `session_config`, with every figure behind it."""
    from export.measure import run_images

    runs = {FP32: SessionSignature(version_dir, None), MIXED: SessionSignature(version_dir, session_config)}
    try:
        figures = {}
        for name, (images, labels) in sets.items():
            outputs = {mode: run_images(run, images) for mode, run in runs.items()}
            figures[name] = set_figures(outputs, labels)
            figures[name]["misses"] = rule.misses(figures[name])
        speeds = paired_speed(runs, speed_images, batch_sizes, pairs)
    finally:
        for run in runs.values():
            run.close()
    missed = {name: entry["misses"] for name, entry in figures.items() if entry["misses"]}
    return {
        "version_dir": str(version_dir),
        "session_config": str(session_config),
        "rule": asdict(rule),
        "sets": figures,
        "speed": speeds,
        "verdict": "refused" if missed else "accepted",
        "refused_because": missed,
    }


def markdown(results: dict[str, Any]) -> list[str]:
    """The accuracy table and the speed table of every model checked."""
    lines = [
        "| model | set (images) | accuracy fp32 -> mixed | ROC-AUC fp32 -> mixed | labels flipped | rule |",
        "|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        for name, entry in model["sets"].items():
            lines.append(
                f"| {model['description']} | {name} ({entry['images']}) "
                f"| {entry['fp32_accuracy']:.4f} -> {entry['mixed_accuracy']:.4f} "
                f"({entry['accuracy_points_difference']:+.2f} points) "
                f"| {entry['fp32_roc_auc']:.4f} -> {entry['mixed_roc_auc']:.4f} "
                f"({entry['roc_auc_difference']:+.4f}) "
                f"| {entry['flipped']} ({100 * entry['flipped_fraction']:.2f}%) "
                f"| {'; '.join(entry['misses']) or 'within the rule'} |"
            )
    batch_sizes = list(results["models"][0]["speed"]) if results["models"] else []
    lines += [
        "",
        "| model: images/s fp32 -> mixed (mixed/fp32 per pair, median (min-max)) | "
        + " | ".join(f"batch {size}" for size in batch_sizes)
        + " |",
        "|---" * (1 + len(batch_sizes)) + "|",
    ]
    for model in results["models"]:
        cells = []
        for size in batch_sizes:
            entry = model["speed"][size]
            cells.append(
                f"{statistics.median(entry[FP32]):.1f} -> {statistics.median(entry[MIXED]):.1f} "
                f"(x{entry['ratio_median']:.2f} ({entry['ratio_min']:.2f}-{entry['ratio_max']:.2f}))"
            )
        lines.append(f"| {model['description']}: **{model['verdict']}** | " + " | ".join(cells) + " |")
    return lines
