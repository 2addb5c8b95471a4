"""Leave-one-source-out evaluation of training recipes: `python -m training.loso --help`.

The selection criterion for models (issue 12): for each photo-like source S that holds both labels,
fit the recipe on the train split of every *other* source, calibrate (temperature, threshold) on
the photo-like validation images of those sources, and evaluate on all of S's train + val images.
The test split is never touched here: it is reported once, for the shipped model.

Per left-out source: accuracy, ROC-AUC, AI recall, real recall; their means. Recipes are
compared pairwise on the same images: McNemar's exact test on the per-image correctness, and a
paired bootstrap (images resampled within each source and label) of the difference in mean AUC.

Heads are fitted on cached frozen-backbone features (training.features), so a recipe takes
seconds once its features are cached; the first run computes them (minutes per view on 2 cores).

    python -m training.loso run --data ../shared/data/ai-vs-real --output runs/loso \
        --recipes today,statistics,statistics_augmented
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tensorflow as tf
import typer

from common.logs import configure_logging
from common.preprocessing import IMAGE_SIZE
from training import features, recipes, selective
from training.data import Example, calibration_indices, load_examples
from training.evaluate import sigmoid

logger = logging.getLogger("training.loso")
app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)

RESULTS_FILE = "loso.json"
TABLE_FILE = "loso.md"


def limit_per_source(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The first `limit` examples of every (source, label, split): a small, still complete subset."""
    if not limit:
        return list(examples)
    seen: dict[tuple[str, int, str | None], int] = defaultdict(int)
    chosen = []
    for example in examples:
        key = (example.source, example.label, example.split)
        if seen[key] < limit:
            seen[key] += 1
            chosen.append(example)
    return chosen


def loso_sources(examples: Sequence[Example]) -> list[str]:
    """The LOSO sources present with both labels in their train+val images."""
    labels: dict[str, set[int]] = defaultdict(set)
    for example in examples:
        if example.split in ("train", "val"):
            labels[example.source].add(example.label)
    return [source for source in recipes.LOSO_SOURCES if labels.get(source) == {0, 1}]


def fold_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    predictions = probabilities >= threshold
    return {
        "count_ai": int(labels.sum()),
        "count_real": int((1 - labels).sum()),
        "accuracy": float(np.mean(predictions == labels.astype(bool))),
        "roc_auc": float(roc_auc_score(labels, probabilities)),
        "ai_recall": float(predictions[labels == 1].mean()),
        "real_recall": float((~predictions[labels == 0]).mean()),
    }


def evaluate_recipe(
    recipe: recipes.Recipe, examples: Sequence[Example], store: features.FeatureStore, sources: Sequence[str]
) -> dict[str, Any]:
    """LOSO of one recipe: per-source metrics, their mean, and per-image scores for paired tests."""
    started = time.monotonic()
    columns = features.groups_for(recipe.backbone).columns(recipe.groups)
    evaluation_view = store.get(recipe.backbone, recipe.view)
    train_views = [evaluation_view] + [store.get(recipe.backbone, view) for view in recipe.augmentation_views]
    flipped = store.get(recipe.backbone, "flip") if recipe.test_time_flip else None
    splits = np.asarray([example.split for example in examples])
    source_names = np.asarray([example.source for example in examples])
    labels = np.asarray([example.label for example in examples], dtype=np.float64)
    folds, images = {}, {}
    for source in sources:
        train = np.flatnonzero((splits == "train") & (source_names != source))
        calibration = np.asarray(calibration_indices(examples, exclude_source=source))
        held_out = np.flatnonzero((source_names == source) & np.isin(splits, ["train", "val"]))
        head = recipes.fit_head(
            recipe,
            [matrix[train] for matrix in train_views],
            [examples[int(index)] for index in train],
            evaluation_view[calibration],
            [examples[int(index)] for index in calibration],
            columns,
        )
        logits = head.logits(evaluation_view[held_out])
        if flipped is not None:
            logits = (logits + head.logits(flipped[held_out])) / 2.0
        probabilities = sigmoid(logits / head.temperature)
        # The band as training fits it (on this fold's calibration images), judged on the left-out source.
        band = selective.fit_band(
            sigmoid(head.logits(evaluation_view[calibration]) / head.temperature),
            labels[calibration],
            head.threshold,
        )
        folds[source] = fold_metrics(probabilities, labels[held_out], head.threshold) | {
            "threshold": head.threshold,
            "temperature": head.temperature,
            "verdict_band": {key: band[key] for key in ("real_below", "ai_from", "width_log_odds")}
            | {
                "held_out": selective.band_outcome(
                    probabilities, labels[held_out], band["real_below"], band["ai_from"]
                )
            },
        }
        images[source] = {
            "index": held_out.tolist(),
            "probability": probabilities.tolist(),
            "correct": ((probabilities >= head.threshold) == labels[held_out].astype(bool)).tolist(),
        }
        logger.info("%s without %s: %s", recipe.name, source, folds[source])
    keys = ("accuracy", "roc_auc", "ai_recall", "real_recall")
    mean = {key: float(np.mean([fold[key] for fold in folds.values()])) for key in keys}
    mean |= {
        "min_ai_recall": min(fold["ai_recall"] for fold in folds.values()),
        "min_real_recall": min(fold["real_recall"] for fold in folds.values()),
    }
    outcomes = [fold["verdict_band"]["held_out"] for fold in folds.values()]
    band_summary = {
        "inconclusive_share": float(np.mean([outcome["inconclusive_share"] for outcome in outcomes])),
        "decided_error_rate": float(
            sum(outcome["decided_errors"] for outcome in outcomes)
            / max(sum(o["decided"] for o in outcomes), 1)
        ),
        "worst_decided_error_rate": max((o["decided_error_rate"] or 0.0) for o in outcomes),
    }
    return {
        "recipe": recipe.to_dict(),
        "folds": folds,
        "mean": mean,
        "verdict_band": band_summary,
        "seconds": round(time.monotonic() - started, 1),
        "images": images,
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on paired per-image correctness (two-sided binomial on the discordant pairs)."""
    from scipy.stats import binomtest

    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p_value)}


def paired_auc_bootstrap(
    result_a: dict[str, Any], result_b: dict[str, Any], labels: np.ndarray, rounds: int, seed: int = 42
) -> dict[str, Any]:
    """Bootstrap CI of mean-over-sources AUC(b) - AUC(a), resampling images within each source and label."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    differences = []
    sources = list(result_a["images"])
    prepared = []
    for source in sources:
        index = np.asarray(result_a["images"][source]["index"])
        if index.tolist() != result_b["images"][source]["index"]:
            raise ValueError(f"{source}: the two recipes were evaluated on different images")
        source_labels = labels[index]
        prepared.append(
            (
                np.asarray(result_a["images"][source]["probability"]),
                np.asarray(result_b["images"][source]["probability"]),
                source_labels,
                np.flatnonzero(source_labels == 1),
                np.flatnonzero(source_labels == 0),
            )
        )
    for _ in range(rounds):
        per_source = []
        for scores_a, scores_b, source_labels, positives, negatives in prepared:
            sample = np.concatenate(
                [rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
            )
            per_source.append(
                roc_auc_score(source_labels[sample], scores_b[sample])
                - roc_auc_score(source_labels[sample], scores_a[sample])
            )
        differences.append(float(np.mean(per_source)))
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "mean_auc_difference": result_b["mean"]["roc_auc"] - result_a["mean"]["roc_auc"],
        "ci95": [float(low), float(high)],
        "rounds": rounds,
    }


def compare(
    name_a: str, name_b: str, results: dict[str, Any], labels: np.ndarray, rounds: int
) -> dict[str, Any]:
    result_a, result_b = results[name_a], results[name_b]
    correct_a = np.concatenate([np.asarray(result_a["images"][s]["correct"]) for s in result_a["images"]])
    correct_b = np.concatenate([np.asarray(result_b["images"][s]["correct"]) for s in result_a["images"]])
    return {
        "a": name_a,
        "b": name_b,
        "pooled_accuracy": [float(correct_a.mean()), float(correct_b.mean())],
        "mcnemar": mcnemar(correct_a, correct_b),
        "auc_bootstrap": paired_auc_bootstrap(result_a, result_b, labels, rounds),
    }


def markdown_table(report: dict[str, Any]) -> str:
    sources = report["sources"]
    header = (
        "| recipe | mean acc. | mean AUC | mean AI recall | mean real recall | min AI recall "
        "| min real recall | " + " | ".join(f"{source} acc / AUC" for source in sources) + " |"
    )
    lines = [header, "|" + "---|" * (7 + len(sources))]
    for name, result in report["recipes"].items():
        mean = result["mean"]
        cells = [
            f"{mean['accuracy']:.3f}",
            f"{mean['roc_auc']:.3f}",
            f"{mean['ai_recall']:.3f}",
            f"{mean['real_recall']:.3f}",
            f"{mean['min_ai_recall']:.3f}",
            f"{mean['min_real_recall']:.3f}",
        ] + [f"{result['folds'][s]['accuracy']:.3f} / {result['folds'][s]['roc_auc']:.3f}" for s in sources]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| a | b | pooled acc. a -> b | McNemar (a only / b only, p) | mean AUC b - a [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for comparison in report["comparisons"]:
        mcnemar_result, bootstrap = comparison["mcnemar"], comparison["auc_bootstrap"]
        lines.append(
            f"| `{comparison['a']}` | `{comparison['b']}` | {comparison['pooled_accuracy'][0]:.3f} -> "
            f"{comparison['pooled_accuracy'][1]:.3f} | {mcnemar_result['only_a_correct']} / "
            f"{mcnemar_result['only_b_correct']}, p={mcnemar_result['p_value']:.2g} | "
            f"{bootstrap['mean_auc_difference']:+.3f} "
            f"[{bootstrap['ci95'][0]:+.3f}, {bootstrap['ci95'][1]:+.3f}] |"
        )
    return "\n".join(lines) + "\n"


def examples_digest(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(
            f"{example.path}|{example.label}|{example.split}|{example.path.stat().st_size}\n".encode()
        )
    return digest.hexdigest()


def run_loso(
    data: Path,
    recipe_names: Sequence[str],
    cache_dir: Path,
    output: Path,
    limit: int | None = None,
    bootstrap_rounds: int = 1000,
) -> dict[str, Any]:
    from common.machine import describe_machine
    from common.repository import code_version

    chosen = [recipes.recipe(name) for name in recipe_names]
    examples = limit_per_source(load_examples(data), limit)
    sources = loso_sources(examples)
    if not sources:
        raise ValueError(f"{data}: none of the LOSO sources {recipes.LOSO_SOURCES} holds both labels")
    store = features.FeatureStore(examples, cache_dir)
    labels = np.asarray([example.label for example in examples], dtype=np.float64)
    results = {recipe.name: evaluate_recipe(recipe, examples, store, sources) for recipe in chosen}
    names = list(results)
    best = max(names, key=lambda name: results[name]["mean"]["roc_auc"])
    pairs = [(names[0], name) for name in names[1:]]
    ranked = sorted(names, key=lambda name: results[name]["mean"]["roc_auc"], reverse=True)
    if len(ranked) > 2 and (ranked[1], ranked[0]) not in pairs:
        pairs.append((ranked[1], ranked[0]))
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "machine": describe_machine(),
        "data": str(data),
        "examples_digest": examples_digest(examples),
        "examples": len(examples),
        "limit_per_source": limit,
        "protocol": "fit on the train split of the other sources, calibrate on their photo-like val images, "
        "evaluate on the left-out source's train+val images; test split untouched",
        "sources": sources,
        "best_by_mean_auc": best,
        "recipes": results,
        "comparisons": [compare(a, b, results, labels, bootstrap_rounds) for a, b in pairs],
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_FILE).write_text(json.dumps(report, indent=1) + "\n")
    (output / TABLE_FILE).write_text(markdown_table(report))
    return report


@app.command()
def run(
    data: Annotated[Path, typer.Option(help="Data set with a manifest (source, style, split columns)")],
    output: Annotated[Path, typer.Option(help="Folder for loso.json and loso.md")],
    recipe_names: Annotated[
        str,
        typer.Option(
            "--recipes",
            help=f"Comma-separated, the first is the baseline; known: {', '.join(recipes.RECIPES)}",
        ),
    ] = "today,statistics",
    cache: Annotated[Path, typer.Option(help="Feature cache folder")] = Path("runs/features"),
    limit_per_source_split: Annotated[
        int | None,
        typer.Option("--limit-per-source", help="Use the first N images per source, label and split"),
    ] = None,
    bootstrap_rounds: Annotated[
        int, typer.Option(help="Paired bootstrap rounds for the AUC difference")
    ] = 1000,
) -> None:
    """Run LOSO for the given recipes; print the table; write loso.json and loso.md."""
    configure_logging(stream=sys.stderr)
    report = run_loso(
        data, [name.strip() for name in recipe_names.split(",") if name.strip()], cache, output,
        limit_per_source_split, bootstrap_rounds,
    )  # fmt: skip
    print(markdown_table(report))


@app.command("features")
def compute_features(
    data: Annotated[Path, typer.Option(help="Data set to compute features for")],
    backbone: Annotated[
        str, typer.Option(help="efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2")
    ],
    views: Annotated[str, typer.Option(help=f"Comma-separated views: {', '.join(features.VIEWS)}")] = "clean",
    cache: Annotated[Path, typer.Option(help="Feature cache folder")] = Path("runs/features"),
) -> None:
    """Compute (or confirm cached) features for every image of a data set, one view at a time."""
    configure_logging(stream=sys.stderr)
    examples = load_examples(data)
    for view in views.split(","):
        matrix = features.extract(examples, backbone, view.strip(), cache)
        print(f"{backbone}/{view}: {matrix.shape[0]} images x {matrix.shape[1]} features")


@app.command()
def speed(
    backbones: Annotated[str, typer.Option(help="Comma-separated backbones")] = (
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
    ),
    rounds: Annotated[int, typer.Option(help="Interleaved rounds per backbone and batch size")] = 5,
    output: Annotated[Path | None, typer.Option(help="Write the results JSON here")] = None,
) -> None:
    """Images/s of each backbone's served network (folded, canonical size), measured side by side.

    Rounds alternate between the backbones (A B C A B C ...), so a change in machine load hits
    all of them alike; the CPU used by other processes meanwhile is recorded.
    """
    import statistics

    from common.machine import OtherLoadMonitor, machine_description
    from export.measure import time_calls

    names = [name.strip() for name in backbones.split(",") if name.strip()]
    networks = {name: features.folded_function(features.build_extractor(name), IMAGE_SIZE) for name in names}
    rng = np.random.default_rng(0)
    batches = {
        size: tf.constant(rng.integers(0, 256, (size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
        for size in (1, 32)
    }
    seconds: dict[tuple[str, int], list[float]] = defaultdict(list)
    monitor = OtherLoadMonitor().start()
    for _ in range(rounds):
        for name, network in networks.items():
            for size, batch in batches.items():
                seconds[(name, size)] += time_calls(
                    functools.partial(network, batch), rounds=1, calls_per_round=max(1, 8 // size)
                )
    other = monitor.stop()
    results: dict[str, dict[str, Any]] = {
        name: {
            f"batch_{size}": {
                "ms_per_batch": round(1000 * statistics.median(seconds[(name, size)]), 1),
                "images_per_second": round(size / statistics.median(seconds[(name, size)]), 1),
            }
            for size in batches
        }
        for name in names
    }
    reference = results[names[0]]["batch_32"]["images_per_second"]
    for name in names:
        results[name]["speed_vs_first"] = round(results[name]["batch_32"]["images_per_second"] / reference, 3)
    report = {
        "image_size": IMAGE_SIZE,
        "machine": machine_description(),
        "other_load": other.to_dict(),
        "backbones": results,
    }
    print(json.dumps(report, indent=1))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    app()
