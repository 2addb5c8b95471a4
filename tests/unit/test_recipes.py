"""Recipe weighting (source balance) and the paired statistics LOSO uses to compare recipes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from training import loso, recipes
from training.data import Example


def example(source: str, label: int, style: str = "photo", split: str = "train") -> Example:
    return Example(path=Path(f"{source}-{label}.jpg"), label=label, split=split, source=source, style=style)


def test_balanced_weights_give_every_source_and_class_its_share() -> None:
    examples = (
        [example("imagenet-sample", 0)] * 900
        + [example("sd15-cheatsheet", 1, "art")] * 1000
        + [example("kaggle-mix", 0)] * 50
        + [example("kaggle-mix", 1)] * 40
        + [example("stylegan2-faces-a", 1)] * 60
        + [example("stylegan2-faces-b", 1)] * 40
    )
    weights = recipes.example_weights(examples, balanced=True)
    assert weights.sum() == pytest.approx(len(examples))
    by_class: dict[int, float] = defaultdict(float)
    by_group: dict[tuple[str, int], float] = defaultdict(float)
    for item, weight in zip(examples, weights, strict=True):
        by_class[item.label] += weight
        by_group[(recipes.source_group(item.source), item.label)] += weight
    assert by_class[0] == pytest.approx(by_class[1])  # both classes weigh the same
    # AI: kaggle-mix, sd15 (art) and the GAN faces (one group) share the class equally.
    assert by_group[("sd15-cheatsheet", 1)] == pytest.approx(by_class[1] / 3)
    assert by_group[("gan-faces", 1)] == pytest.approx(by_group[("kaggle-mix", 1)])
    art = sum(weight for item, weight in zip(examples, weights, strict=True) if item.style == "art")
    assert art < weights.sum() / 2  # photo-like images outweigh art although art is the largest source
    assert np.all(recipes.example_weights(examples, balanced=False) == 1.0)


def test_mcnemar_counts_only_discordant_pairs() -> None:
    correct_a = np.array([True] * 10 + [False] * 5 + [True] * 20)
    correct_b = np.array([False] * 10 + [True] * 5 + [True] * 20)
    result = loso.mcnemar(correct_a, correct_b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (10, 5)
    assert 0.2 < result["p_value"] < 0.5  # 10 vs 5 is no evidence either way
    assert loso.mcnemar(correct_a, correct_a)["p_value"] == 1.0
    assert loso.mcnemar(np.ones(40, bool), np.zeros(40, bool))["p_value"] < 1e-6


def test_paired_bootstrap_separates_a_real_gain_from_none() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0.0, 1.0], 100)
    weak = labels * 0.3 + rng.normal(size=200)
    strong = labels * 3.0 + rng.normal(size=200)

    def result(scores: np.ndarray, auc: float) -> dict[str, object]:
        return {
            "images": {"s": {"index": list(range(200)), "probability": scores.tolist()}},
            "mean": {"roc_auc": auc},
        }

    gain = loso.paired_auc_bootstrap(result(weak, 0.58), result(strong, 0.98), labels, rounds=200)
    assert gain["ci95"][0] > 0.2
    same = loso.paired_auc_bootstrap(result(weak, 0.58), result(weak, 0.58), labels, rounds=50)
    assert same["ci95"] == [0.0, 0.0]


def test_loso_sources_need_both_labels_outside_the_test_split() -> None:
    examples = [
        example("kaggle-mix", 0),
        example("kaggle-mix", 1, split="val"),
        example("aidi-study", 0),
        example("aidi-study", 1, split="test"),  # only in test: not a LOSO fold
    ]
    assert loso.loso_sources(examples) == ["kaggle-mix"]


def test_unknown_recipe_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.recipe("magic")
