"""The inconclusive band (training/selective.py): its edges, its outcome, and its guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from training import selective


def scores(rng: np.random.Generator, count: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking scores: log-odds ~ N(+/- separation, 1) by label."""
    labels = rng.integers(0, 2, count)
    logits = rng.normal(np.where(labels == 1, separation, -separation), 1.0)
    return 1 / (1 + np.exp(-logits)), labels


def test_band_edges_are_symmetric_in_log_odds_around_the_threshold() -> None:
    real_below, ai_from = selective.band_edges(0.5, 1.0)
    assert real_below == pytest.approx(1 / (1 + np.e)) and ai_from == pytest.approx(1 - real_below)
    assert selective.band_edges(0.3, 0.0) == pytest.approx((0.3, 0.3))


def test_outcome_counts_inconclusive_and_decided_errors() -> None:
    probabilities = np.array([0.05, 0.2, 0.45, 0.55, 0.8, 0.95])
    labels = np.array([0, 1, 0, 1, 0, 1])
    outcome = selective.band_outcome(probabilities, labels, 0.3, 0.7)
    assert outcome["decided"] == 4 and outcome["inconclusive_share"] == pytest.approx(2 / 6, abs=1e-4)
    assert outcome["decided_errors"] == 2 and outcome["decided_error_rate"] == 0.5
    assert outcome["ai_recall_decided"] == pytest.approx(1 / 3, abs=1e-4)


def test_well_separated_scores_need_no_band_and_overlapping_ones_a_wide_one() -> None:
    rng = np.random.default_rng(0)
    easy = selective.fit_band(*scores(rng, 2000, 4.0), threshold=0.5)
    hard = selective.fit_band(*scores(rng, 2000, 1.0), threshold=0.5)
    assert easy["width_log_odds"] == 0.0 and easy["calibration"]["inconclusive_share"] == 0.0
    assert hard["width_log_odds"] is not None and hard["width_log_odds"] > 0.2
    assert hard["calibration"]["decided_error_rate"] <= selective.TARGET_ERROR
    assert 0.1 < hard["calibration"]["inconclusive_share"] < 0.9


def test_too_few_images_give_no_band_everything_is_inconclusive() -> None:
    band = selective.fit_band(np.array([0.1, 0.9, 0.2]), np.array([0, 1, 1]), threshold=0.5)
    assert band["width_log_odds"] is None and (band["real_below"], band["ai_from"]) == (0.0, 1.0)


def test_the_guarantee_holds_on_fresh_images_from_the_same_distribution() -> None:
    """Learn-then-Test: over many calibration draws, the band's error rate among decided answers
    on a large fresh sample exceeds the target in at most about `delta` of the draws."""
    rng = np.random.default_rng(1)
    fresh_probabilities, fresh_labels = scores(rng, 200_000, 1.2)
    misses = 0
    draws = 150
    for _ in range(draws):
        band = selective.fit_band(*scores(rng, 600, 1.2), threshold=0.5)
        outcome = selective.band_outcome(
            fresh_probabilities, fresh_labels, band["real_below"], band["ai_from"]
        )
        misses += (outcome["decided_error_rate"] or 0.0) > selective.TARGET_ERROR
    # delta = 0.05: 7.5 expected at most; allow for the binomial spread of 150 draws.
    assert misses / draws <= selective.DELTA + 0.05
