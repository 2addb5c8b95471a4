"""Calibration, threshold and metrics helpers of training.evaluate, on numbers with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training import evaluate


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(20_000) < evaluate.sigmoid(true_logits)).astype(np.float64)
    overconfident = true_logits * 3.0  # a model three times too sure of itself
    assert evaluate.fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.05)


def test_calibration_lowers_ece_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 1.5, 10_000)
    labels = (rng.random(10_000) < evaluate.sigmoid(true_logits)).astype(np.float64)
    overconfident = true_logits * 4.0
    before = evaluate.expected_calibration_error(evaluate.sigmoid(overconfident), labels)
    temperature = evaluate.fit_temperature(overconfident, labels)
    after = evaluate.expected_calibration_error(evaluate.sigmoid(overconfident / temperature), labels)
    assert before > 0.1
    assert after < 0.02


def test_ece_of_perfect_and_worst_predictions() -> None:
    labels = np.array([0, 1, 0, 1], dtype=np.float64)
    assert evaluate.expected_calibration_error(labels.copy(), labels) == 0.0
    assert evaluate.expected_calibration_error(1.0 - labels, labels) == pytest.approx(1.0)


def test_threshold_maximizes_balanced_accuracy() -> None:
    probabilities = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1], dtype=np.float64)
    threshold = evaluate.choose_threshold(probabilities, labels)
    assert 0.3 < threshold <= 0.35
    metrics = evaluate.classification_metrics(probabilities, labels, threshold)
    assert metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[3, 0], [0, 5]]


def test_classification_metrics_match_hand_counts() -> None:
    probabilities = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], dtype=np.float64)
    metrics = evaluate.classification_metrics(probabilities, labels, 0.5)
    # TP=2 (0.9, 0.8), FN=1 (0.3), FP=1 (0.6), TN=2
    assert metrics["confusion_matrix"] == [[2, 1], [1, 2]]
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["roc_auc"] == pytest.approx(8 / 9)
