"""Evaluate a trained classifier: metrics, calibration, threshold, robustness, plots.

Calibration (temperature scaling) and the decision threshold are both fitted on the
validation split and only then applied to test: the test split never chooses anything.
Robustness perturbs the *original* image (JPEG re-encode, downscale, blur) and then runs
the shared preprocessing, as a re-shared or re-compressed upload would reach the gateway.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image, ImageFilter
from scipy.optimize import minimize_scalar
from sklearn import metrics as sk_metrics

from common import signatures
from common.preprocessing import decode_and_resize, open_image, resize_to_model_input
from training import selective
from training.data import (
    LABEL_NAMES,
    Example,
    by_split,
    calibration_indices,
    limit_per_split,
    load_examples,
    with_splits,
)

ECE_BINS = 15
Perturbation = Callable[[Image.Image], Image.Image]


def jpeg(quality: int) -> Perturbation:
    def perturb(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return perturb


def downscale(factor: float) -> Perturbation:
    def perturb(image: Image.Image) -> Image.Image:
        width, height = image.size
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return image.resize(size, Image.Resampling.BICUBIC)

    return perturb


def blur(sigma: float) -> Perturbation:
    def perturb(image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    return perturb


ROBUSTNESS_PERTURBATIONS: dict[str, Perturbation | None] = {
    "clean": None,
    "jpeg_q90": jpeg(90),
    "jpeg_q75": jpeg(75),
    "jpeg_q50": jpeg(50),
    "downscale_x0.5": downscale(0.5),
    "gaussian_blur_sigma1.5": blur(1.5),
}


def load_images(examples: Sequence[Example], perturbation: Perturbation | None = None) -> np.ndarray:
    """uint8 canonical images through the shared preprocessing, optionally perturbing the decoded original."""

    def one(example: Example) -> np.ndarray:
        if perturbation is None:
            return decode_and_resize(example.path.read_bytes())
        # A perturbed data set image, not compressed again: how the robustness figures were measured.
        return resize_to_model_input(perturbation(open_image(example.path.read_bytes())), recompress=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(one, examples)))


def predict_logits(model: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Pre-sigmoid logits of a classifier built by training.models."""
    from training.models import logit_model

    outputs = logit_model(model).predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(outputs[signatures.OUTPUT_LOGIT], dtype=np.float64).reshape(-1)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimizing the negative log-likelihood of sigmoid(logit / T)."""

    def negative_log_likelihood(log_temperature: float) -> float:
        scaled = logits / math.exp(log_temperature)
        # log(1 + exp(-|z|)) form: stable for large logits.
        return float(np.mean(np.logaddexp(0.0, scaled) - labels * scaled))

    result = minimize_scalar(negative_log_likelihood, bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(result.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of P(AI) against the AI label, equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    indices = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for index in range(bins):
        in_bin = indices == index
        if in_bin.any():
            error += in_bin.mean() * abs(probabilities[in_bin].mean() - labels[in_bin].mean())
    return float(error)


def reliability_curve(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    indices = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    return [
        {
            "bin_low": float(edges[index]),
            "bin_high": float(edges[index + 1]),
            "count": int((indices == index).sum()),
            "mean_probability": float(probabilities[indices == index].mean()),
            "fraction_ai": float(labels[indices == index].mean()),
        }
        for index in range(bins)
        if (indices == index).any()
    ]


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximizing balanced accuracy (Youden's J) on the given (validation) scores."""
    false_positive_rate, true_positive_rate, thresholds = sk_metrics.roc_curve(labels, probabilities)
    best = int(np.argmax(true_positive_rate - false_positive_rate))
    return float(min(max(thresholds[best], 0.0), 1.0))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    predictions = (probabilities >= threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    return {
        "count": len(labels),
        "accuracy": float(sk_metrics.accuracy_score(labels, predictions)),
        "balanced_accuracy": float(sk_metrics.balanced_accuracy_score(labels, predictions))
        if both_classes
        else None,
        "precision": float(sk_metrics.precision_score(labels, predictions, zero_division=0)),
        "recall": float(sk_metrics.recall_score(labels, predictions, zero_division=0)),
        "f1": float(sk_metrics.f1_score(labels, predictions, zero_division=0)),
        "roc_auc": float(sk_metrics.roc_auc_score(labels, probabilities)) if both_classes else None,
        "confusion_matrix": sk_metrics.confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
        "classification_report": sk_metrics.classification_report(
            labels,
            predictions,
            labels=[0, 1],
            target_names=list(LABEL_NAMES),
            output_dict=True,
            zero_division=0,
        ),
    }


def evaluate_model(model: Any, examples: Sequence[Example], robustness: bool = True) -> dict[str, Any]:
    """The full evaluation of `model` on the val and test splits of `examples`."""
    validation, test = by_split(examples, "val"), by_split(examples, "test") or by_split(examples, "val")
    if not validation:
        raise ValueError("evaluation needs a validation split (to fit calibration and threshold)")
    validation_labels = np.asarray([example.label for example in validation], dtype=np.float64)
    test_labels = np.asarray([example.label for example in test], dtype=np.float64)
    validation_logits = predict_logits(model, load_images(validation))
    test_logits = predict_logits(model, load_images(test))

    # Calibrate where the model is used (training.data.calibration_indices).
    calibration = np.asarray(calibration_indices(validation), dtype=np.int64)
    temperature = fit_temperature(validation_logits[calibration], validation_labels[calibration])
    validation_probabilities = sigmoid(validation_logits / temperature)
    threshold = choose_threshold(validation_probabilities[calibration], validation_labels[calibration])
    test_probabilities_raw = sigmoid(test_logits)
    test_probabilities = sigmoid(test_logits / temperature)

    test_metrics = classification_metrics(test_probabilities, test_labels, threshold)
    test_metrics["ece_uncalibrated"] = expected_calibration_error(test_probabilities_raw, test_labels)
    test_metrics["ece_calibrated"] = expected_calibration_error(test_probabilities, test_labels)
    test_metrics["per_source"] = {
        source: classification_metrics(test_probabilities[mask], test_labels[mask], threshold)
        | {"classification_report": None}
        for source in sorted({example.source for example in test})
        for mask in [np.asarray([example.source == source for example in test])]
    }
    report: dict[str, Any] = {
        "temperature": temperature,
        "threshold": threshold,
        "threshold_rule": "maximum balanced accuracy (Youden's J) on calibrated validation scores"
        + (" of the photo-like images" if len(calibration) < len(validation) else ""),
        "calibration_images": len(calibration),
        "validation": classification_metrics(validation_probabilities, validation_labels, threshold)
        | {"ece_calibrated": expected_calibration_error(validation_probabilities, validation_labels)},
        "test": test_metrics,
        "test_split": "test" if by_split(examples, "test") else "val (no test split given)",
        "curves": {
            "roc": dict(
                zip(
                    ("false_positive_rate", "true_positive_rate"),
                    (values.tolist() for values in sk_metrics.roc_curve(test_labels, test_probabilities)[:2]),
                    strict=True,
                )
            ),
            "reliability_uncalibrated": reliability_curve(test_probabilities_raw, test_labels),
            "reliability_calibrated": reliability_curve(test_probabilities, test_labels),
        },
    }
    # The three-way verdict's band, fitted where the threshold is (training/selective.py); its outcome
    # on the test split is reported with the test split's other figures, once.
    band = selective.fit_band(
        validation_probabilities[calibration], validation_labels[calibration], threshold
    )
    report["verdict_band"] = band | {
        "test": selective.band_outcome(test_probabilities, test_labels, band["real_below"], band["ai_from"])
    }
    if robustness:
        report["robustness"] = {
            name: classification_metrics(
                test_probabilities
                if perturbation is None
                else sigmoid(predict_logits(model, load_images(test, perturbation)) / temperature),
                test_labels,
                threshold,
            )["accuracy"]
            for name, perturbation in ROBUSTNESS_PERTURBATIONS.items()
        }
    return report


def write_plots(
    report: dict[str, Any], history: dict[str, list[float]] | None, plots_dir: Path
) -> list[Path]:
    """Training curves, ROC, confusion matrix and reliability diagram as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []

    if history:
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for axis, metric in zip(axes, ("loss", "accuracy", "auc"), strict=True):
            for prefix in ("", "val_"):
                if prefix + metric in history:
                    axis.plot(history[prefix + metric], label=(prefix or "train_") + metric)
            axis.set_xlabel("epoch")
            axis.set_title(metric)
            axis.legend()
        written.append(_save(figure, plots_dir / "training_curves.png"))

    roc = report["curves"]["roc"]
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(
        roc["false_positive_rate"], roc["true_positive_rate"], label=f"AUC {report['test']['roc_auc']:.3f}"
    )
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.set_xlabel("false positive rate (real called AI)")
    axis.set_ylabel("true positive rate (AI caught)")
    axis.set_title("ROC, test split")
    axis.legend(loc="lower right")
    written.append(_save(figure, plots_dir / "roc.png"))

    matrix = np.asarray(report["test"]["confusion_matrix"])
    figure, axis = plt.subplots(figsize=(4.2, 4))
    axis.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center", fontsize=14)
    axis.set_xticks([0, 1], [f"pred {name}" for name in LABEL_NAMES])
    axis.set_yticks([0, 1], [f"true {name}" for name in LABEL_NAMES])
    axis.set_title(f"test, threshold {report['threshold']:.3f}")
    written.append(_save(figure, plots_dir / "confusion_matrix.png"))

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for key, label in (
        ("reliability_uncalibrated", "uncalibrated"),
        ("reliability_calibrated", f"T = {report['temperature']:.2f}"),
    ):
        curve = report["curves"][key]
        axis.plot(
            [point["mean_probability"] for point in curve],
            [point["fraction_ai"] for point in curve],
            marker="o",
            label=label,
        )
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.set_xlabel("predicted P(AI)")
    axis.set_ylabel("observed fraction AI")
    axis.set_title(f"reliability, test (ECE {report['test']['ece_calibrated']:.3f})")
    axis.legend()
    written.append(_save(figure, plots_dir / "reliability.png"))
    return written


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def evaluate_run(run_dir: Path, data: Path | None = None, robustness: bool = True) -> dict[str, Any]:
    """Evaluate the model of a training run and write `evaluation.json` and plots beside it."""
    from training import run_folder
    from training.models import load_classifier

    config = run_folder.read_config(run_dir)
    examples = with_splits(load_examples(data or Path(config["data"])))
    examples = limit_per_split(examples, config.get("limit_per_split"))
    model = load_classifier(run_dir / run_folder.MODEL_FILE)
    report = evaluate_model(model, examples, robustness=robustness)
    history_path = run_dir / run_folder.HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.is_file() else None
    report["plots"] = [
        str(path.relative_to(run_dir)) for path in write_plots(report, history, run_dir / "plots")
    ]
    run_folder.write_json(run_dir, run_folder.EVALUATION_FILE, report)
    return report


def summary_line(report: dict[str, Any]) -> str:
    test = report["test"]
    line = (
        f"test accuracy {test['accuracy']:.3f}  F1 {test['f1']:.3f}  AUC {test['roc_auc']:.3f}  "
        f"ECE {test['ece_uncalibrated']:.3f} -> {test['ece_calibrated']:.3f} "
        f"(T={report['temperature']:.2f})  "
        f"threshold {report['threshold']:.3f}"
    )
    if "robustness" in report:
        line += "\nrobustness: " + ", ".join(
            f"{name} {value:.3f}" for name, value in report["robustness"].items()
        )
    line += "\nper source: " + ", ".join(
        f"{source} {values['accuracy']:.3f} (n={values['count']})"
        for source, values in test["per_source"].items()
    )
    return line


def main(
    run: Annotated[Path, typer.Argument(help="Training run folder (holds model.keras and config.json)")],
    data: Annotated[Path | None, typer.Option(help="Dataset to evaluate on (default: the run's own)")] = None,
    robustness: Annotated[bool, typer.Option(help="Also measure accuracy under JPEG/downscale/blur")] = True,
) -> None:
    """Evaluate a training run: writes evaluation.json and plots/ into the run folder."""
    print(summary_line(evaluate_run(run, data, robustness)))


if __name__ == "__main__":
    typer.run(main)
