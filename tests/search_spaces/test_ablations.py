"""Evaluation-time grids: parsing, the key checks, the report's grid sizes, the idempotency key."""

from __future__ import annotations

import dataclasses

import pytest

from search_spaces import ablations
from vae_attention.errors import ConfigError
from vae_attention.training.anomaly import AnomalyConfig
from vae_attention.training.disentangle import DisentangleConfig

FIELDS = {"anomaly": {f.name for f in dataclasses.fields(AnomalyConfig)},
          "disentangle": {f.name for f in dataclasses.fields(DisentangleConfig)}}


def test_grid_parsing_keeps_order_drops_repeats_and_joins_tuple_elements():
    grid = ablations.parse_grid(["activation=relu, abs,relu", "eval_digits=7+4,9", "num_bins=1e+3"])
    assert grid == {"activation": ("relu", "abs"), "eval_digits": ("7,4", "9"), "num_bins": ("1e+3",)}
    assert ablations.combinations({"a": (1, 2), "b": (3,)}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert ablations.combinations({}) == [{}]
    for bad in (["activation"], ["=relu"], ["activation="], ["score=sum", "score=mean_per_dim"]):
        with pytest.raises(ConfigError):
            ablations.parse_grid(bad)


def test_every_evaluation_field_is_a_config_field_and_training_fields_are_refused():
    for kind, fields in ablations.EVALUATION_FIELDS.items():
        assert set(fields) <= FIELDS[kind], kind
        ablations.check_grid_keys(kind, {f: ("x",) for f in fields}, FIELDS[kind])
    with pytest.raises(ConfigError, match="a training field"):
        ablations.check_grid_keys("anomaly", {"lr": ("1",)}, FIELDS["anomaly"])
    with pytest.raises(ConfigError, match="a training field"):
        ablations.check_grid_keys("disentangle", {"gamma": ("1",)}, FIELDS["disentangle"])
    with pytest.raises(ConfigError, match="not a config field"):
        ablations.check_grid_keys("anomaly", {"metric_num_train": ("1",)}, FIELDS["anomaly"])


def test_report_grids_are_the_reports_ablation():
    sizes = {d: len(ablations.combinations(ablations.report_grid(d))) for d in ("ucsd", "mvtec", "mnist")}
    assert sizes == {"ucsd": 81, "mvtec": 81, "mnist": 54}  # 3 activations × 3 normalisations × layers × 3 scores
    assert ablations.report_grid("mvtec")["attention_layer"] == (
        "encoder.layer2.1.conv2", "encoder.layer3.1.conv2", "encoder.layer4.1.conv2")
    with pytest.raises(ConfigError):
        ablations.report_grid("dsprites")


def test_the_settings_key_ignores_order_and_tells_values_apart():
    key = ablations.settings_key({"activation": "relu", "num_bins": 4096})
    assert key == ablations.settings_key({"num_bins": 4096, "activation": "relu"})
    assert key != ablations.settings_key({"activation": "relu", "num_bins": 4097})
    assert len(key) == 16
