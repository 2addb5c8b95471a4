"""The LOSO CLI end to end on a tiny subset of the real data: features, folds, paired tests, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.repository import REPO_ROOT
from training import data, loso

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_loso_cli_on_a_tiny_subset(ai_vs_real_dir: Path, tmp_path: Path) -> None:
    output, cache = tmp_path / "loso", tmp_path / "features"
    command = [
        sys.executable, "-m", "training.loso", "run",
        "--data", str(ai_vs_real_dir), "--output", str(output), "--cache", str(cache),
        "--recipes", "stages,stages_strong", "--limit-per-source", "1", "--bootstrap-rounds", "20",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| `stages` |" in completed.stdout and "McNemar" in completed.stdout

    report = json.loads((output / "loso.json").read_text())
    examples = data.load_examples(ai_vs_real_dir)
    sources = {example.source for example in examples}
    assert report["sources"] and set(report["sources"]) <= sources
    assert report["examples"] < 200  # the subset, not the whole data set
    for result in report["recipes"].values():
        assert set(result["folds"]) == set(report["sources"])
        for fold in result["folds"].values():
            for key in ("accuracy", "roc_auc", "ai_recall", "real_recall"):
                assert 0.0 <= fold[key] <= 1.0
            assert fold["count_ai"] >= 1 and fold["count_real"] >= 1
            # The three-way verdict's band, fitted on the fold's calibration images, judged on the source.
            band = fold["verdict_band"]
            assert 0.0 <= band["real_below"] <= band["ai_from"] <= 1.0
            assert 0.0 <= band["held_out"]["inconclusive_share"] <= 1.0
        assert 0.0 <= result["verdict_band"]["inconclusive_share"] <= 1.0
        assert 0.0 <= result["mean"]["roc_auc"] <= 1.0
    # Evaluated images come from the left-out source's train+val: the test split is never used.
    subset = loso.limit_per_source(examples, 1)
    for source, images in report["recipes"]["stages"]["images"].items():
        held_out = [subset[index] for index in images["index"]]
        assert {example.source for example in held_out} == {source}
        assert all(example.split in ("train", "val") for example in held_out)
    (comparison,) = report["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("stages", "stages_strong")
    assert 0.0 <= comparison["mcnemar"]["p_value"] <= 1.0
    table_rows = [
        line for line in (output / "loso.md").read_text().splitlines() if line.startswith("| `stages")
    ]
    assert len(table_rows) == 3  # two recipes and their comparison
    assert (cache / "efficientnet_lite0" / "clean.npz").is_file()  # features cached for the next run
