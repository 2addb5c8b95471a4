"""End to end: export a small real model, reload it in another process, compare with Keras.

Tolerances (stated here, measured values in docs/export.md):
- `serving_default` of the plain fp32 export: max |probability - Keras| <= 1e-5 and the same
  label for every image (same arithmetic, different op scheduling).
- `predict_image_bytes` on the original upload files vs Keras on common.preprocessing's pixels:
  max |probability difference| <= 0.02 (the in-graph decoder is within 1 grey level per pixel).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from common import signatures
from common.preprocessing import IMAGE_SIZE
from tests.export.conftest import TEMPERATURE, run_python

pytestmark = [pytest.mark.model, pytest.mark.integration]

FP32_PROBABILITY_TOLERANCE = 1e-5
BYTES_PROBABILITY_TOLERANCE = 0.05  # export.validate.DECODE_PROBABILITY_TOLERANCE: measured up to 0.041

# Runs in a separate Python process: nothing of the exporting process is shared.
RELOAD_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf

saved_model_dir, images_path, files_dir, output_dir = sys.argv[1:5]
loaded = tf.saved_model.load(saved_model_dir)
described = {}
for name, function in loaded.signatures.items():
    described[name] = {
        "inputs": {key: [spec.dtype.name, spec.shape.as_list()]
                   for key, spec in function.structured_input_signature[1].items()},
        "outputs": {key: [spec.dtype.name, spec.shape.as_list()]
                    for key, spec in function.structured_outputs.items()},
    }
Path(output_dir, "signatures.json").write_text(json.dumps(described))
from_images = loaded.signatures["serving_default"](image=tf.constant(np.load(images_path)))
files = [path.read_bytes() for path in sorted(Path(files_dir).iterdir())]
from_bytes = loaded.signatures["predict_image_bytes"](image_bytes=tf.constant(files))
explained = loaded.signatures["explain_image"](image=tf.constant(np.load(images_path)[:2]))
np.savez(Path(output_dir, "outputs.npz"),
         **{"images/" + key: value.numpy() for key, value in from_images.items()},
         **{"bytes/" + key: value.numpy() for key, value in from_bytes.items()},
         **{"explain/" + key: value.numpy() for key, value in explained.items()})
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def run_reference(tiny_run: Path, ai_vs_real_dir: Path) -> dict[str, object]:
    from export.reference import build_reference_set, keras_logits
    from training.models import load_classifier
    from training.run_folder import derive_split_files

    classifier = load_classifier(tiny_run / "model.keras")
    images = build_reference_set(derive_split_files(ai_vs_real_dir, "val", 16)).images
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    return {
        "classifier": classifier,
        "images": images,
        "logits": keras_logits(classifier, images),
        "threshold": evaluation["threshold"],
    }


def probabilities(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64) / TEMPERATURE))


def test_export_writes_a_complete_version_folder(first_export: Path) -> None:
    model_dir = first_export.parent
    assert [entry.name for entry in model_dir.iterdir()] == ["1"], "no staging folder may be left behind"
    for name in ("saved_model.pb", signatures.WARMUP_FILE, signatures.MODEL_CARD_FILE, "model_card.md"):
        assert (first_export / name).is_file(), name


def test_reloaded_in_another_process_signatures_and_outputs_match_keras(
    first_export: Path, run_reference: dict, uploads_dir: Path, tmp_path: Path
) -> None:
    from common.preprocessing import decode_and_resize
    from export.reference import keras_logits

    images = run_reference["images"]
    np.save(tmp_path / "images.npy", images)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    upload_paths = sorted(path for path in uploads_dir.iterdir() if path.suffix.lower() != ".csv")
    for path in upload_paths:
        (files_dir / path.name).write_bytes(path.read_bytes())
    completed = run_python(
        ["-c", RELOAD_SCRIPT, str(first_export), str(tmp_path / "images.npy"), str(files_dir), str(tmp_path)]
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    described = json.loads((tmp_path / "signatures.json").read_text())
    outputs = {
        signatures.OUTPUT_PROBABILITY: ["float32", [None]],
        signatures.OUTPUT_LOGIT: ["float32", [None]],
        signatures.OUTPUT_THRESHOLD: ["float32", [None]],
        signatures.OUTPUT_LABEL: ["int32", [None]],
    }
    assert described == {
        signatures.SERVING_SIGNATURE: {
            "inputs": {signatures.IMAGE_INPUT: ["uint8", [None, IMAGE_SIZE, IMAGE_SIZE, 3]]},
            "outputs": outputs,
        },
        signatures.BYTES_SIGNATURE: {
            "inputs": {signatures.BYTES_INPUT: ["string", [None]]},
            "outputs": outputs,
        },
        signatures.EXPLAIN_SIGNATURE: {
            "inputs": {signatures.IMAGE_INPUT: ["uint8", [None, IMAGE_SIZE, IMAGE_SIZE, 3]]},
            "outputs": outputs | {signatures.OUTPUT_HEATMAP: ["float32", [None, 8, 8]]},
        },
    }

    with np.load(tmp_path / "outputs.npz") as loaded:
        served = {key: loaded[key] for key in loaded.files}
    threshold = run_reference["threshold"]
    expected = probabilities(run_reference["logits"])
    assert np.abs(served["images/probability"] - expected).max() <= FP32_PROBABILITY_TOLERANCE
    assert np.abs(served["images/logit"] - run_reference["logits"]).max() <= 1e-4
    assert np.array_equal(served["images/label"], (expected >= threshold).astype(np.int32))
    assert 0 < served["images/label"].sum() < len(images), "the fixture's threshold splits the images"
    assert np.all(served["images/threshold"] == np.float32(threshold))

    # The explain signature: the same outputs, and its heatmap is the Keras model's own occlusion
    # sensitivity (each cell blurred by the graph's box filter, the logit difference).
    import tensorflow as tf

    from export.graph import OCCLUSION_BLUR_PIXELS

    assert np.array_equal(served["explain/label"], served["images/label"][:2])
    for row in range(2):
        original = images[row].astype(np.float32)
        blurred = tf.nn.avg_pool2d(original[np.newaxis], OCCLUSION_BLUR_PIXELS, 1, "SAME").numpy()[0]
        variants = []
        for cell in range(64):
            top, left = 32 * (cell // 8), 32 * (cell % 8)
            variant = original.copy()
            variant[top : top + 32, left : left + 32] = blurred[top : top + 32, left : left + 32]
            variants.append(np.round(variant).astype(np.uint8))
        occluded = keras_logits(run_reference["classifier"], np.stack(variants)).reshape(8, 8)
        expected_heatmap = run_reference["logits"][row] - occluded
        assert np.abs(served["explain/heatmap"][row] - expected_heatmap).max() <= 1e-3

    # The bytes signature on the original upload files (JPEG, PNG, WebP at their native sizes).
    shared_pixels = np.stack([decode_and_resize(path.read_bytes()) for path in upload_paths])
    expected_from_files = probabilities(keras_logits(run_reference["classifier"], shared_pixels))
    difference = np.abs(served["bytes/probability"] - expected_from_files)
    print(
        f"bytes signature vs Keras on {len(upload_paths)} uploads: max {difference.max():.2e}, "
        f"mean {difference.mean():.2e}"
    )
    assert difference.max() <= BYTES_PROBABILITY_TOLERANCE
    assert np.array_equal(
        served["bytes/label"], (served["bytes/probability"] >= np.float32(threshold)).astype(int)
    )


def test_warmup_file_holds_prediction_logs_for_both_signatures(first_export: Path) -> None:
    import tensorflow as tf

    from export.warmup import read_warmup

    records = read_warmup(first_export / signatures.WARMUP_FILE)
    batches: dict[str, list[int]] = {}
    for record in records:
        assert record.WhichOneof("log_type") == "predict_log"
        request = record.predict_log.request
        assert request.model_spec.name == "ai_detector"
        ((input_name, tensor),) = request.inputs.items()
        values = tf.make_ndarray(tensor)
        if request.model_spec.signature_name == signatures.SERVING_SIGNATURE:
            assert input_name == signatures.IMAGE_INPUT
            assert values.dtype == np.uint8 and values.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
            assert values.std() > 10, "real images, not blank ones"
        else:
            assert request.model_spec.signature_name == signatures.BYTES_SIGNATURE
            assert input_name == signatures.BYTES_INPUT and values.dtype == object
        batches.setdefault(request.model_spec.signature_name, []).append(values.shape[0])
    assert sorted(batches[signatures.SERVING_SIGNATURE]) == [1, 4]
    assert 4 in batches[signatures.BYTES_SIGNATURE]
    assert batches[signatures.BYTES_SIGNATURE].count(1) >= 4, "one record per image format, plus JPEG"


def test_model_card_describes_the_version(first_export: Path, tiny_run: Path) -> None:
    card = json.loads((first_export / signatures.MODEL_CARD_FILE).read_text())
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    assert card["model_name"] == "ai_detector" and card["version"] == 1
    assert card["backbone"] == "efficientnet_lite0"
    assert card["threshold"] == evaluation["threshold"] and card["temperature"] == TEMPERATURE
    assert set(card["signatures"]) == {
        signatures.SERVING_SIGNATURE,
        signatures.BYTES_SIGNATURE,
        signatures.EXPLAIN_SIGNATURE,
    }
    assert card["signatures"][signatures.EXPLAIN_SIGNATURE]["outputs"][signatures.OUTPUT_HEATMAP] == {
        "dtype": "float32",
        "shape": [-1, signatures.EXPLAIN_GRID, signatures.EXPLAIN_GRID],
    }
    assert card["signatures"][signatures.SERVING_SIGNATURE]["inputs"][signatures.IMAGE_INPUT] == {
        "dtype": "uint8",
        "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3],
    }
    assert card["evaluation"]["test"]["per_source"]["imagenet-sample"]["accuracy"] == 0.5
    assert "classification_report" not in card["evaluation"]["test"]
    assert card["evaluation"]["robustness"] == evaluation["robustness"]
    assert card["verdict_band"] == evaluation["verdict_band"]  # what the gateway's verdict reads
    assert 0.0 <= card["verdict_band"]["real_below"] <= card["verdict_band"]["ai_from"] <= 1.0
    assert card["data"]["fingerprint"] == "fixture"
    licences = {source["source"]: source["licence"] for source in card["data"]["sources"]}
    assert licences["sd15-cheatsheet"] == "MIT" and "ImageNet" in licences["imagenet-sample"]
    assert card["training"]["config"]["limit_per_split"] == 16
    assert card["code_version"] and card["exported_at"]
    assert card["export"]["variant"] == "fp32"
    validation = card["export"]["validation"]
    assert validation[signatures.SERVING_SIGNATURE]["label_flips"] == 0
    assert {"JPEG", "PNG", "BMP", "GIF"} <= set(validation[signatures.BYTES_SIGNATURE]["formats"])
    markdown = (first_export / "model_card.md").read_text()
    assert f"{evaluation['threshold']:.4f}" in markdown and "MIT" in markdown
    assert "## Three-way verdict" in markdown


def test_next_export_is_a_new_version_and_never_touches_the_old_one(
    first_export: Path, tiny_run: Path, models_dir: Path
) -> None:
    from export.export import export_run

    before = sha256(first_export / "saved_model.pb")
    result = export_run(tiny_run, models_dir, variant_name="folded", warmup_batch_sizes=[1])
    assert result.version == 2 and result.path == models_dir / "ai_detector" / "2"
    assert result.card["export"]["variant"] == "folded"
    assert (
        result.card["export"]["validation"][signatures.SERVING_SIGNATURE]["max_abs_probability_difference"]
        < 1e-4
    )
    assert sha256(first_export / "saved_model.pb") == before
    assert sorted(entry.name for entry in (models_dir / "ai_detector").iterdir()) == ["1", "2"]


def test_a_failing_export_leaves_nothing_behind(first_export: Path, tiny_run: Path, models_dir: Path) -> None:
    from export.errors import ValidationFailedError
    from export.export import export_run
    from export.optimize import Tolerance

    model_dir = models_dir / "ai_detector"
    before_listing, before_hash = listing(model_dir), sha256(first_export / "saved_model.pb")
    # A tolerance no graph can meet: the real gate runs, in its fresh process, and refuses.
    impossible = Tolerance(max_abs_probability_difference=-1.0)
    with pytest.raises(ValidationFailedError, match="max \\|probability - Keras\\|"):
        export_run(tiny_run, models_dir, variant_name="fp32", warmup_batch_sizes=[1], tolerance=impossible)
    assert listing(model_dir) == before_listing
    assert sha256(first_export / "saved_model.pb") == before_hash


def test_an_existing_version_is_refused_before_any_work(
    first_export: Path, tiny_run: Path, models_dir: Path
) -> None:
    from export.errors import VersionExistsError
    from export.export import export_run

    before = listing(models_dir)
    with pytest.raises(VersionExistsError):
        export_run(tiny_run, models_dir, version=1, variant_name="fp32")
    assert listing(models_dir) == before
