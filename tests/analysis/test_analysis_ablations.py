"""The "Ablations" section from a synthetic store: re-scores (child runs) against their trials, exact values.

Values are dyadic fractions, so every mean and difference below is exact in floating point and the oracle is
plain arithmetic written out by hand.
"""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.cli import main
from analysis.synthetic import anomaly_trial, log_evaluation, log_trial

SWEEP = "anomaly-mvtec"
CATEGORIES = ("bottle", "grid")
SEEDS = (1, 2)
RELU = {"activation": "relu"}
LAYER4 = {"attention_layer": "encoder.layer4.1.conv2", "score": "mean_per_dim"}


def finals(category: str, seed: int) -> dict[str, float]:
    base = {"bottle": 0.75, "grid": 0.5}[category] + 0.0625 * seed
    return {"loss": 100.0, "pixel_auroc": base, "best_iou": base / 4, "best_iou_seed": 0.5, "best_iou_per_batch": 0.25}


def relu_delta(category: str, seed: int) -> float:
    """Δ pixel AUROC of the relu re-score: bottle −1/16, grid +1/8 (seed 1); bottle −1/32, grid +1/4 (seed 2)."""
    return {("bottle", 1): -0.0625, ("grid", 1): 0.125, ("bottle", 2): -0.03125, ("grid", 2): 0.25}[(category, seed)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_ablations")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(SWEEP, artifact_location=str(root / "artifacts"))
    for seed in SEEDS:
        for category in CATEGORIES:
            own = finals(category, seed)
            parent = log_trial(client, SWEEP, anomaly_trial("mvtec", seed, own, category=category),
                               data_source="mvtec:/data", study="mvtec")
            log_evaluation(client, SWEEP, parent, RELU,
                           {**own, "pixel_auroc": own["pixel_auroc"] + relu_delta(category, seed),
                            "best_iou": own["best_iou"] + 0.125})
            if seed == 1 and category == "bottle":  # one trial only: n = 1, no interval
                log_evaluation(client, SWEEP, parent, LAYER4, {**own, "pixel_auroc": 0.5})
                # an interrupted re-score is not a result
                log_evaluation(client, SWEEP, parent, {"activation": "none"}, {"pixel_auroc": 0.0}, status="RUNNING")
    # a quick trial is not selected, so neither is its re-score
    quick = log_trial(client, SWEEP, anomaly_trial("mvtec", 1, finals("bottle", 1), category="bottle"),
                      preset="quick", data_source="mvtec:/data", study="mvtec")
    log_evaluation(client, SWEEP, quick, RELU, {"pixel_auroc": 0.0})
    out = root / "report"
    assert main(["report", "--tracking-uri", uri, "--out", str(out), "--sweep", SWEEP, "--no-log"]) == 0
    return out


def test_each_setting_has_its_mean_delta_and_interval_over_seeds(report):
    table = pd.read_csv(report / "tables" / "ablations_mvtec.csv")
    assert list(table["setting"]) == ["default (as trained)", "activation=relu",
                                      "attention_layer=encoder.layer4.1.conv2, score=mean_per_dim"]
    default, relu, layer4 = (table.iloc[i] for i in range(3))
    own = [finals(c, s)["pixel_auroc"] for s in SEEDS for c in CATEGORIES]
    assert default["pixel_auroc"] == sum(own) / 4 and default["trials"] == 4 and default["seeds"] == 2

    deltas = [relu_delta(c, s) for s in SEEDS for c in CATEGORIES]
    assert relu["trials"] == 4 and relu["seeds"] == 2
    assert relu["pixel_auroc"] == sum(a + d for a, d in zip(own, deltas, strict=True)) / 4
    assert relu["pixel_auroc_delta"] == sum(deltas) / 4  # 0.0703125
    # per seed first: seed 1 (−1/16 + 1/8)/2 = 1/32, seed 2 (−1/32 + 1/4)/2 = 7/64; two seeds: min–max
    assert (relu["pixel_auroc_delta_low"], relu["pixel_auroc_delta_high"]) == (1 / 32, 7 / 64)
    assert relu["pixel_auroc_delta_kind"] == "min–max"
    assert relu["best_iou_delta"] == 0.125 and relu["best_iou_delta_low"] == relu["best_iou_delta_high"] == 0.125
    assert relu["best_iou_seed_delta"] == 0.0 and relu["best_iou_per_batch_delta"] == 0.0  # every IoU definition

    assert layer4["trials"] == 1 and layer4["seeds"] == 1
    assert layer4["pixel_auroc"] == 0.5 and layer4["pixel_auroc_delta"] == 0.5 - finals("bottle", 1)["pixel_auroc"]
    assert pd.isna(layer4["pixel_auroc_delta_low"]) and layer4["pixel_auroc_delta_kind"] == "n = 1"


def test_the_section_is_in_the_report_with_signed_differences(report):
    text = (report / "report.md").read_text()
    assert "## Ablations" in text or "# Ablations" in text
    assert "(Δ +0.070 [+0.031, +0.109] (min–max))" in text
    assert "activation=none" not in text  # the unfinished re-score
