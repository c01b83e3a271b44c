"""The report's RBM section on a synthetic store: intervals, paired differences and verdicts by hand.

Oracles: the 95 % t-intervals are computed here from the chosen values with Student's t quantiles taken from a
table (t_{0.975, 1} = 12.706204736174707, t_{0.975, 2} = 4.302652729911275), not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.report import build
from analysis.synthetic import TrialRun, log_trial, ramp, tiny_png

T975 = {2: 12.706204736174707, 3: 4.302652729911275}  # by n (degrees of freedom n − 1)
SWEEP = "rbm-synthetic"
# configuration -> per-seed final pixel AUROC of each map
CONFIGS = {
    "seed": dict(params=dict(protocol="seed", sizes=[784, 784, 625, 484, 324, 256, 169, 64, 36], k=1, lr=0.1,
                             temperature=0.1, rbm_map="seed"),
                 auroc={"gradcam": [0.90, 0.70, 0.95], "seed": [0.50, 0.52, 0.48], "vae": [0.80, 0.84, 0.79],
                        "input": [0.93, 0.93, 0.93]}),
    "paper": dict(params=dict(protocol="paper", sizes=[784, 100, 36], k=5, lr=0.01, temperature=0.5,
                              rbm_map="gradcam"),
                  auroc={"gradcam": [0.95, 0.97], "seed": [0.50, 0.50], "vae": [0.80, 0.84], "input": [0.9, 0.9]}),
}


def by_hand(values):
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = values.mean()
    half = T975[n] * values.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def rbm_run(name: str, seed_index: int) -> TrialRun:
    config = CONFIGS[name]
    params = dict(digit=1, hidden="binary", persistent=False, rbm_layer=1, epochs_per_layer=2, vae_epochs=2,
                  epochs=6, seed=seed_index + 1, data_dir="/data", **config["params"])
    final = {f"pixel_auroc/{kind}": values[seed_index] for kind, values in config["auroc"].items()}
    final.update({f"best_iou/{kind}": 0.1 for kind in config["auroc"]})
    final["pixel_auroc"] = final[f"pixel_auroc/{params['rbm_map']}"]
    histories = {key: [(6, value)] for key, value in final.items()}
    histories.update(recon_error=ramp([1, 2, 3, 4], 0.2, 0.05), free_energy_gap=ramp([1, 2, 3, 4], 0.0, 1.0),
                     cd_loss=ramp([1, 2, 3, 4], -5.0, -1.0), loss=ramp([5, 6], 300.0, 200.0))
    return TrialRun(params=params, histories=histories, figures={"rbm_0006.png": tiny_png(seed_index)},
                    run_name=f"rbm_{name}_s{seed_index + 1}")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rbm_report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name, config in CONFIGS.items():
        for i in range(len(config["auroc"]["vae"])):
            log_trial(client, SWEEP, rbm_run(name, i), data_source="mnist:/data", study=name)
    out = root / "report"
    result = build(uri, [SWEEP], out, log_run=False)
    return out, result


def test_rbm_runs_are_selected_and_get_a_section(report):
    out, result = report
    assert result.runs == 5
    md = (out / "report.md").read_text()
    assert "## RBM" in md and "5 finished trial runs (2 configurations; seeds 1, 2, 3)" in md
    # the headline verdict counts (worked out in test_verdicts_follow_the_stated_rule)
    assert ("RBM gradcam (ours): holds in 0, fails in 1, undecided in 1 of 2 configuration(s); "
            "RBM seed (report's): holds in 2, fails in 0, undecided in 0 of 2 configuration(s)") in md


def test_verdicts_follow_the_stated_rule(report):
    out, _ = report
    table = pd.read_csv(out / "tables" / "rbm_verdict.csv")
    expected = {("seed", "gradcam"): "undecided", ("seed", "seed"): "holds",
                ("paper", "gradcam"): "fails", ("paper", "seed"): "holds"}
    assert len(table) == 4
    for _, row in table.iterrows():
        protocol = row["label"].split(",")[0]
        auroc = CONFIGS[protocol]["auroc"]
        deltas = [a - b for a, b in zip(auroc[row["construction"]], auroc["vae"], strict=True)]
        mean, low, high, n = by_hand(deltas)
        assert row["n"] == n
        assert row["delta_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["delta_low"] == pytest.approx(low, abs=1e-9) and row["delta_high"] == pytest.approx(high, abs=1e-9)
        assert row["verdict"] == expected[(protocol, row["construction"])]
        # the rule, applied to the hand-computed interval
        assert row["verdict"] == ("holds" if high < 0 else "fails" if low > 0 else "undecided")


def test_pixel_auroc_table_has_mean_and_interval_over_seeds_per_map(report):
    out, _ = report
    table = pd.read_csv(out / "tables" / "rbm_pixel_auroc.csv")
    assert len(table) == 2
    for _, row in table.iterrows():
        auroc = CONFIGS[row["label"].split(",")[0]]["auroc"]
        for kind, values in auroc.items():
            mean, low, high, n = by_hand(values)
            assert row[f"{kind}_mean"] == pytest.approx(mean, abs=1e-12) and row[f"{kind}_n"] == n
            if np.std(values) > 0:
                assert row[f"{kind}_low"] == pytest.approx(low, abs=1e-9)
                assert row[f"{kind}_high"] == pytest.approx(high, abs=1e-9)
            else:  # no spread: a zero-width interval at the mean
                assert row[f"{kind}_low"] == pytest.approx(mean) and row[f"{kind}_high"] == pytest.approx(mean)
    md = (out / "tables" / "rbm_pixel_auroc.md").read_text()
    mean, low, high, _ = by_hand(CONFIGS["seed"]["auroc"]["gradcam"])
    assert f"{mean:.3f} [{low:.3f}, {high:.3f}] (n=3)" in md


def test_figures_curves_and_the_grid_of_each_configuration(report):
    out, _ = report
    assert (out / "figures" / "rbm_pixel_auroc.png").stat().st_size > 0
    assert (out / "figures" / "rbm_curves.png").stat().st_size > 0
    grids = sorted((out / "figures" / "artifacts").glob("rbm_*.png"))
    assert len(grids) == 2  # one per configuration
    html = (out / "report.html").read_text()
    assert "RBM maps: paper, digit 1, 784-100-36, binary, k=5, lr=0.01, τ=0.5" in html
