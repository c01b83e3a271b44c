"""Like-for-like numbers: intervals over seeds against an exact bootstrap, the seed report's stored dSprites
results beside our seed-protocol runs only, and the "what differs" table against the protocols themselves."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from mlflow import MlflowClient

from analysis import reference
from analysis.disentangle import configurations, seed_report_table
from analysis.report import differences_section
from analysis.selection import select
from analysis.stats import fmt_interval, seed_interval
from analysis.store import load_sweep
from analysis.synthetic import disentangle_trial, log_trial
from search_spaces import protocols


def exact_percentile_bootstrap(values, level=0.95):
    """Every one of the n^n equally likely resamples, enumerated: the exact distribution of the resampled mean,
    its lower and upper (1 − level)/2 quantiles, and the probability masses strictly beyond and at-or-beyond each."""
    means = np.sort([np.mean(c) for c in itertools.product(values, repeat=len(values))])
    tail = (1 - level) / 2
    low, high = np.quantile(means, tail, method="inverted_cdf"), np.quantile(means, 1 - tail, method="inverted_cdf")
    masses = [np.mean(means < low), np.mean(means <= low), np.mean(means > high), np.mean(means >= high)]
    return low, high, [float(m) for m in masses]


@pytest.mark.parametrize("values", [[0.5, 0.625, 0.75], [1.0, 2.0, 3.0, 4.0], [0.25, 0.25, 0.5, 1.0, 1.0]])
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(values):
    low, high, (below, at_or_below, above, at_or_above) = exact_percentile_bootstrap(values)
    # the quantiles sit on atoms of the exact distribution with a margin of > 3 binomial sds of a 10,000-resample
    # estimate on each side, so the sampled percentile lands on the same atom
    margin = 3 * math.sqrt(0.025 * 0.975 / 10_000)
    assert below < 0.025 - margin < 0.025 + margin < at_or_below
    assert above < 0.025 - margin < 0.025 + margin < at_or_above
    assert seed_interval(values) == (pytest.approx(low), pytest.approx(high), "95% bootstrap")
    assert seed_interval(values) == seed_interval(list(values))  # a fixed generator: the same interval every time


def test_two_seeds_give_the_labelled_min_max_and_one_seed_none():
    assert seed_interval([0.75, 0.5]) == (0.5, 0.75, "min–max")
    assert fmt_interval([0.75, 0.5]) == "0.625 ± 0.177 [min–max 0.500, 0.750] (n=2)"
    low, high, kind = seed_interval([0.75, float("nan")])
    assert math.isnan(low) and math.isnan(high) and kind == "n = 1"
    assert fmt_interval([0.75]) == "0.750 (n = 1)" and fmt_interval([]) == "–"


# -- the seed report's stored dSprites results -------------------------------------------------------------
SEED_REF = {"model": "factorvae", "gamma": 40.0, "iterations": 300_000}  # FACT-2021: 0.73375 and 0.8375


@pytest.fixture(scope="module")
def dsprites_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_protocols")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("protocols", artifact_location=str(root / "artifacts"))
    for label, seeds in (("seed", (1, 2, 3)), ("seed+custom", (1, 2)), ("paper", (1, 2))):
        for seed in seeds:
            final = {"disentanglement": 0.5, "disentanglement_seed": 0.625 + 0.0625 * seed, "eval_recon_loss": 40.0}
            run = disentangle_trial("factorvae", seed, final, gamma=40, iterations=300_000, report_every=100_000,
                                    eval_every=150_000, figure=False, protocol=label)
            log_trial(client, "protocols", run, study="exp1")
    return select([load_sweep(client, "protocols")]).runs


def test_seed_report_numbers_sit_beside_seed_protocol_runs_only(dsprites_runs):
    item = seed_report_table(configurations(dsprites_runs), dsprites_runs)
    ref = reference.seed_dsprites().set_index(["model", "gamma", "iterations"]).loc[tuple(SEED_REF.values())]
    assert (ref["value"], ref["sd"], ref["n"]) == (statistics.mean([0.73375, 0.8375]),
                                                    round(statistics.stdev([0.73375, 0.8375]), 6), 2)
    data = item.data
    assert len(data) == 1  # the paper and seed+custom configurations get no published number
    ours = [0.625 + 0.0625 * s for s in (1, 2, 3)]
    row = data.iloc[0]
    assert (row["ours_mean"], row["ours_sd"], row["ours_n"]) == (statistics.mean(ours), statistics.stdev(ours), 3)
    assert (row["ours_low"], row["ours_high"], row["ours_interval"]) == (min(ours), max(ours), "95% bootstrap")
    assert row["seed"] == ref["value"] and row["delta_seed"] == statistics.mean(ours) - ref["value"]
    header = [c for c in item.display.columns if c.startswith("seed report")]
    assert header == ["seed report (stored results), protocol seed: the report's FactorVAE-metric variant "
                      "(L = 100, 800 votes)"]


def test_config_table_names_each_configurations_protocol(dsprites_runs):
    configs = configurations(dsprites_runs)
    assert sorted(configs["protocol"]) == ["paper", "seed", "seed+custom"]
    assert configs["label"].str.contains(r"\[seed\+custom, full, 300,000 it\]", regex=True).any()


# -- what differs ------------------------------------------------------------------------------------------
def test_what_differs_covers_the_known_differences_and_names_real_settings():
    table = reference.differences()
    aspects = set(zip(table["study"], table["aspect"], strict=True))
    for needed in [("disentangle", "VAE architecture"), ("disentangle", "loop order"), ("disentangle", "AD gradient"),
                   ("anomaly", "loss"), ("anomaly", "IoU definition"), ("anomaly", "evaluation set"),
                   ("anomaly", "model selection")]:
        assert needed in aspects
    for _, row in table.iterrows():
        assert row["paper"] and row["authors"] and row["seed"] and row["reproduced_by"]
        for setting in row["settings"].split("; "):
            if setting.startswith("metric: ") or "(" in setting:
                continue
            # every named setting is a field that the protocols of that study set, and they differ on it
            assert setting in protocols.protocol_fields(row["study"]), setting
            bundles = [protocols.bundle(row["study"], name, "mvtec" if row["study"] == "anomaly" else None)
                       for name in protocols.PROTOCOL_NAMES]
            assert len({repr(b[setting]) for b in bundles}) > 1, setting
    section = differences_section()
    assert section.items[0].data.equals(table) and len(section.items[0].display) == len(table)


def test_reference_rows_name_their_protocol():
    rows = reference.load()
    assert set(rows.loc[rows["source"] == "paper", "protocol"]) == {"paper"}
    assert set(rows.loc[rows["source"] == "seed", "protocol"]) == {"seed"}
    assert set(rows.loc[rows["source"] == "public_reproduction", "protocol"]) == {""}
    assert reference.comparable("seed", "seed") and not reference.comparable("seed+custom", "seed")
    assert not reference.comparable(float("nan"), "paper") and not reference.comparable("paper", "public_reproduction")
