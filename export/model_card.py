"""The model card written beside `saved_model.pb`: `model_card.json` for tools, `model_card.md` for people.

It says what the version is (backbone, training config, data fingerprint, code versions), how
to call it (signature and tensor names, dtypes, shapes: read from the exported SavedModel
itself), how to read its answers (threshold, calibration temperature), how good it is
(validation and test metrics, per source, robustness), what data it learned from and under
which licences, and how the served graph was made (variant, its measured agreement and speed).
"""

from __future__ import annotations

import csv
import json
import platform
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import signatures
from common.preprocessing import DATASET_JPEG_QUALITY, DATASET_MAX_SIDE, DEFAULT_MAX_PIXELS, IMAGE_SIZE
from training.run_folder import TrainingRun

MARKDOWN_FILE = "model_card.md"
# Keys of training/evaluate.py's metrics that are too bulky for a card (kept in the run folder).
_BULKY_METRICS = ("classification_report", "curves", "plots")

OUTPUT_MEANINGS = {
    signatures.OUTPUT_PROBABILITY: "calibrated P(AI-generated) = sigmoid(logit / temperature)",
    signatures.OUTPUT_LOGIT: "raw pre-sigmoid score of the network (uncalibrated)",
    signatures.OUTPUT_THRESHOLD: "the decision threshold, repeated per row",
    signatures.OUTPUT_LABEL: "1 = AI-generated (probability >= threshold), 0 = real",
    signatures.OUTPUT_HEATMAP: f"`{signatures.EXPLAIN_SIGNATURE}` only: float [N, 8, 8], the logit minus the "
    "logit when that cell of the 256x256 input loses its fine detail (box blur); positive pushes toward "
    "AI-generated; 65 network passes per image",
}


def _compact(metrics: Any) -> Any:
    if isinstance(metrics, dict):
        return {key: _compact(value) for key, value in metrics.items() if key not in _BULKY_METRICS}
    return metrics


def _markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of a markdown text, as rows keyed by the lower-cased header cells."""
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
            tables.append([])
        elif set("".join(cells)) <= set("-: "):
            continue
        elif len(cells) == len(header):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


def data_sources(data: Path) -> list[dict[str, Any]]:
    """Sources of a data set with their licences and image counts.

    Licences and origins come from the data README's table (beside or above the data folder);
    counts, and the licence where no README names one, from `manifest.csv`.
    """
    data = Path(data)
    folder = data if data.is_dir() else data.parent
    counts: Counter[str] = Counter()
    manifest_licences: dict[str, str] = {}
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            for row in csv.DictReader(handle):
                source = (row.get("source") or "unknown").strip()
                counts[source] += 1
                manifest_licences.setdefault(source, (row.get("licence") or row.get("license") or "").strip())
    readme_rows: dict[str, dict[str, str]] = {}
    for readme in (folder / "README.md", folder.parent / "README.md"):
        if readme.is_file():
            for table in _markdown_tables(readme.read_text()):
                for row in table:
                    licence = row.get("licence") or row.get("license")
                    if "source" in row and licence:
                        readme_rows.setdefault(row["source"].strip("` "), row)
            if readme_rows:
                break
    sources = sorted(set(counts) | set(readme_rows))
    described = []
    for source in sources:
        row = readme_rows.get(source, {})
        described.append(
            {
                "source": source,
                "images": counts.get(source, 0),
                "labels": row.get("label", ""),
                "origin": row.get("origin", ""),
                "licence": row.get("licence")
                or row.get("license")
                or manifest_licences.get(source, "unknown"),
            }
        )
    return described


def loso_summary(run: TrainingRun) -> dict[str, Any] | None:
    """The run's own leave-one-source-out result (`loso.json` in the run folder, from training.loso)."""
    path = Path(run.directory) / "loso.json"
    recipe = (run.config.get("recipe") or {}).get("name")
    if not path.is_file() or not recipe:
        return None
    report = json.loads(path.read_text())
    result = report.get("recipes", {}).get(recipe)
    if result is None:
        return None
    return {
        "recipe": recipe,
        "protocol": report.get("protocol"),
        "code_version": report.get("code_version"),
        "folds": result["folds"],
        "mean": result["mean"],
        "verdict_band": result.get("verdict_band"),
    }


def build_model_card(
    run: TrainingRun,
    model_name: str,
    version: int,
    data: Path,
    export: dict[str, Any],
    gate_report: dict[str, Any],
    code_version: str,
) -> dict[str, Any]:
    """The card's content: `export` describes the variant and its measurements, `gate_report` the gate."""
    import tensorflow as tf

    evaluation = run.evaluation
    return {
        "model_name": model_name,
        "version": version,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version,
        "backbone": run.backbone,
        "weights": run.config.get("weights"),
        "signatures": gate_report.get("signatures", {}),
        "input_contract": {
            signatures.SERVING_SIGNATURE: (
                f"uint8 RGB [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], the canonical image of "
                "common.preprocessing.decode_and_resize (EXIF orientation, RGB with alpha over white, longest"
                f" side scaled down to {DATASET_MAX_SIDE} with Lanczos and saved as JPEG quality "
                f"{DATASET_JPEG_QUALITY} as the data set was (not again for a file already in that form), "
                f"the centred {IMAGE_SIZE}x{IMAGE_SIZE} window with mirrored edges); casting, crops or flips "
                "and the backbone's normalization happen inside the graph"
            ),
            signatures.BYTES_SIGNATURE: (
                "encoded image files (JPEG, PNG, GIF first frame, BMP; WebP decodes too), normalized inside "
                "the graph the same way: mean difference <= 2.5 grey levels per pixel from the shared "
                "preprocessing, <= 40% of values more than 2 levels apart (Lanczos implementations differ "
                "and the JPEG step turns their differences into block-wise ones); "
                f"EXIF orientation is not applied; images over {DEFAULT_MAX_PIXELS:,} pixels are refused"
            ),
            "outputs": OUTPUT_MEANINGS,
            "image_size": IMAGE_SIZE,
        },
        "loso": loso_summary(run),
        "threshold": run.threshold,
        "temperature": run.temperature,
        "threshold_rule": evaluation.get("threshold_rule"),
        # The three-way verdict's inconclusive band (training/selective.py); the gateway reads it here.
        "verdict_band": evaluation.get("verdict_band"),
        "evaluation": {
            "test_split": evaluation.get("test_split"),
            "validation": _compact(evaluation.get("validation")),
            "test": _compact(evaluation.get("test")),
            "robustness": evaluation.get("robustness"),
        },
        "data": {
            "path": run.config.get("data"),
            "fingerprint": run.config.get("data_fingerprint"),
            "sources": data_sources(data),
        },
        "training": {
            "run": str(run.directory),
            "created_at": run.config.get("created_at"),
            "code_version": run.config.get("code_version"),
            "config": run.config,
        },
        "export": export
        | {
            "validation": {
                key: gate_report.get(key)
                for key in (signatures.SERVING_SIGNATURE, signatures.BYTES_SIGNATURE, "warmup", "tolerance")
            },
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
        },
    }


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "n/a"


def _number(value: Any, format_spec: str = ".3f") -> str:
    return format(value, format_spec) if isinstance(value, int | float) else "n/a"


def render_markdown(card: dict[str, Any]) -> str:
    test = card["evaluation"].get("test") or {}
    lines = [
        f"# {card['model_name']} version {card['version']}: AI-generated image detector",
        "",
        f"Backbone **{card['backbone']}** ({card.get('weights')} start), exported {card['exported_at']} "
        f"from code `{card['code_version']}` as variant **{card['export']['variant']}** "
        f"({card['export']['description']}).",
        "",
        "## How to call it",
        "",
        "| signature | inputs | outputs |",
        "|---|---|---|",
    ]
    for name, described in card["signatures"].items():
        inputs = ", ".join(
            f"`{key}` {spec['dtype']} {spec['shape']}" for key, spec in described["inputs"].items()
        )
        outputs = ", ".join(f"`{key}` {spec['dtype']}" for key, spec in described["outputs"].items())
        lines.append(f"| `{name}` | {inputs} | {outputs} |")
    lines += [""] + [f"- `{name}`: {meaning}" for name, meaning in card["input_contract"]["outputs"].items()]
    lines += [
        "",
        f"- `{signatures.SERVING_SIGNATURE}` input: {card['input_contract'][signatures.SERVING_SIGNATURE]}.",
        f"- `{signatures.BYTES_SIGNATURE}` input: {card['input_contract'][signatures.BYTES_SIGNATURE]}.",
        f"- Threshold **{card['threshold']:.4f}** on the calibrated probability, temperature "
        f"**{card['temperature']:.4f}** ({card.get('threshold_rule')}).",
        "",
        f"## Test metrics ({card['evaluation'].get('test_split')}, {test.get('count', 'n/a')} images)",
        "",
        f"Accuracy {_percent(test.get('accuracy'))}, "
        f"balanced accuracy {_percent(test.get('balanced_accuracy'))}, F1 {_percent(test.get('f1'))}, "
        f"ROC AUC {_number(test.get('roc_auc'))}, "
        f"ECE {_number(test.get('ece_calibrated'))} after calibration.",
        "",
        "| source | images | accuracy |",
        "|---|---|---|",
    ]
    for source, metrics in (test.get("per_source") or {}).items():
        lines.append(f"| {source} | {metrics.get('count')} | {_percent(metrics.get('accuracy'))} |")
    robustness = card["evaluation"].get("robustness") or {}
    if robustness:
        lines += [
            "",
            "Robustness (test accuracy): " + ", ".join(f"{k} {_percent(v)}" for k, v in robustness.items()),
        ]
    lines += _band_lines(card.get("verdict_band"), card.get("loso"))
    lines += _loso_lines(card.get("loso"))
    lines += [
        "",
        "## Training data",
        "",
        f"`{card['data']['path']}`, fingerprint `{card['data']['fingerprint']}`.",
        "",
        "| source | images in the data set | labels | licence |",
        "|---|---|---|---|",
    ]
    for source in card["data"]["sources"]:
        lines.append(
            f"| {source['source']} | {source['images']} | {source['labels']} | {source['licence']} |"
        )
    validation = card["export"]["validation"]
    served = validation.get(signatures.SERVING_SIGNATURE) or {}
    from_bytes = validation.get(signatures.BYTES_SIGNATURE) or {}
    lines += [
        "",
        "## Export",
        "",
        f"Agreement with the Keras model on {served.get('count')} validation images: "
        f"max |probability difference| {_number(served.get('max_abs_probability_difference'), '.2g')}, "
        f"{served.get('label_flips')} label flips; bytes signature on {from_bytes.get('count')} files "
        f"({', '.join(from_bytes.get('formats', []))}): max "
        f"{_number(from_bytes.get('max_abs_probability_difference'), '.2g')}.",
        f"Trained at {card['training']['created_at']} with code `{card['training']['code_version']}`; "
        f"TensorFlow {card['export']['versions']['tensorflow']}.",
        "",
    ]
    return "\n".join(lines)


def _band_lines(band: dict[str, Any] | None, loso: dict[str, Any] | None) -> list[str]:
    """The three-way verdict: the band, the error target, and how it held on data it never saw."""
    if not band:
        return []
    lines = [
        "",
        "## Three-way verdict",
        "",
        f"Scores in [{band['real_below']:.4f}, {band['ai_from']:.4f}) are **inconclusive**; below, `real`; "
        f"from `ai_from` up, `ai` ({band['rule']}).",
        "",
        "| images | inconclusive | error rate of the decided answers (target "
        f"{_percent(band['target_error'])}) | AI recall among them | real recall among them |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("calibration (photo-like validation)", band.get("calibration")),
        ("test split", band.get("test")),
    ]
    for name, outcome in rows:
        if outcome:
            lines.append(
                f"| {name}, {outcome['images']} | {_percent(outcome['inconclusive_share'])} | "
                f"{_percent(outcome['decided_error_rate'])} | {_percent(outcome['ai_recall_decided'])} | "
                f"{_percent(outcome['real_recall_decided'])} |"
            )
    summary = (loso or {}).get("verdict_band")
    if summary:
        lines.append(
            f"| left-out sources (LOSO, each fold's own band), mean | "
            f"{_percent(summary['inconclusive_share'])} | {_percent(summary['decided_error_rate'])} "
            f"(worst source {_percent(summary['worst_decided_error_rate'])}) | | |"
        )
    return lines


def _loso_lines(loso: dict[str, Any] | None) -> list[str]:
    """The card's account of sources the model never saw, and its limits in plain words."""
    if not loso:
        return []
    lines = [
        "",
        f"## On sources it never saw (leave-one-source-out, recipe `{loso['recipe']}`)",
        "",
        f"{loso['protocol']}. This, not the test split, is how the model was chosen.",
        "",
        "| left-out source | AI / real images | accuracy | ROC AUC | AI recall | real recall |",
        "|---|---|---|---|---|---|",
    ]
    for source, fold in loso["folds"].items():
        lines.append(
            f"| {source} | {fold['count_ai']} / {fold['count_real']} | {_percent(fold['accuracy'])} | "
            f"{_number(fold['roc_auc'])} | {_percent(fold['ai_recall'])} | {_percent(fold['real_recall'])} |"
        )
    mean = loso["mean"]
    lines.append(
        f"| **mean** | | {_percent(mean['accuracy'])} | {_number(mean['roc_auc'])} | "
        f"{_percent(mean['ai_recall'])} | {_percent(mean['real_recall'])} |"
    )
    weakest = min(loso["folds"].items(), key=lambda item: item[1]["roc_auc"])
    lines += [
        "",
        "## Limits, in plain words",
        "",
        f"- On photo-like sources it was not trained on it is right about {_percent(mean['accuracy'])} of "
        f"the time (ROC AUC {_number(mean['roc_auc'])}); on the hardest, {weakest[0]}, barely better than a "
        f"coin (AUC {_number(weakest[1]['roc_auc'])}). The test split's higher numbers come from sources it "
        "has seen. Treat its score as weak evidence for a new generator or a new kind of photo, "
        "never as proof.",
        "- It looks at low-level image statistics of a 256x256 window (after the longest side is scaled to "
        "384 px); heavy resizing or recompression of an upload weakens what it sees.",
        "- The data holds no real face photos (the GAN faces are AI only) and little art with a real "
        "counterpart: faces and paintings are judged on what the data could teach, which is little.",
    ]
    return lines


def write_model_card(directory: Path, card: dict[str, Any]) -> None:
    (Path(directory) / signatures.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (Path(directory) / MARKDOWN_FILE).write_text(render_markdown(card))
