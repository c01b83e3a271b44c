"""Protocols: every bundle is a valid config, the precedence of the layers, the `+custom` label, the CLI option.

In-process (``study.run``'s parser and each study's ``build_plan``): nothing here starts Ray.
"""

from __future__ import annotations

import pytest

from search_spaces import protocols
from search_spaces.anomaly import resolved_params as anomaly_resolved
from search_spaces.anomaly import trial_config
from search_spaces.disentangle import QUICK_LOOP, STUDY_LOOP, config_key, resolved_params, trial_configs
from study.options import with_defaults
from study.run import STUDIES, build_parser, main
from vae_attention.training.anomaly import AnomalyConfig
from vae_attention.training.disentangle import DisentangleConfig

ANOMALY_TARGET = {"mnist": {"digit": 1}, "ucsd": {}, "mvtec": {"category": "bottle"}}


def plan_of(argv: list[str]):
    args = with_defaults(build_parser().parse_args(argv))
    return STUDIES[args.handler].build_plan(args)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage and the MLflow file resolve in the working directory
    return tmp_path


# -- the bundles as data -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", protocols.PROTOCOL_NAMES)
def test_every_disentangle_bundle_is_a_valid_config_with_the_same_fields(name):
    values = protocols.bundle("disentangle", name)
    assert tuple(values) == protocols.protocol_fields("disentangle")
    config = DisentangleConfig.from_dict({"model": "ad_factorvae", **values})  # Literal choices checked here
    assert {k: getattr(config, k) for k in values} == values


@pytest.mark.parametrize("dataset", protocols.ANOMALY_DATASETS)
@pytest.mark.parametrize("name", protocols.PROTOCOL_NAMES)
def test_every_anomaly_bundle_is_a_valid_config_with_the_same_fields(name, dataset):
    values = protocols.bundle("anomaly", name, dataset)
    assert tuple(values) == protocols.protocol_fields("anomaly")
    config = AnomalyConfig.from_dict({"dataset": dataset, **ANOMALY_TARGET[dataset], **values})
    assert {k: getattr(config, k) for k in values} == values


def test_protocols_differ_where_the_sources_do():
    paper, seed = protocols.bundle("disentangle", "paper"), protocols.bundle("disentangle", "seed")
    assert (paper["ad_gradient"], seed["ad_gradient"]) == ("differentiable", "detached")
    assert (paper["loop_order"], seed["loop_order"]) == ("sequential", "deferred")
    assert (paper["encoder_fc_relu"], paper["architecture"], seed["architecture"]) == (False, "kim_mnih", "konny")
    mvtec, ucsd = protocols.bundle("anomaly", "seed", "mvtec"), protocols.bundle("anomaly", "seed", "ucsd")
    assert (mvtec["eval_set"], mvtec["model_selection"], ucsd["eval_set"]) == ("defective", "test_auroc", "all")
    assert protocols.bundle("anomaly", "paper", "mvtec")["model_selection"] == "last"


def test_bundle_is_a_copy_and_unknown_names_fail():
    protocols.bundle("disentangle", "seed")["pairs"] = "top2"
    assert protocols.bundle("disentangle", "seed")["pairs"] == "consecutive_images"
    with pytest.raises(Exception, match="paper, authors, seed"):
        protocols.bundle("disentangle", "kim")


def test_layers_apply_protocol_then_quick_then_explicit():
    protocol = {"iterations": 300_000, "pairs": "top2", "loop_order": "deferred"}
    quick = {"iterations": 100}
    explicit = {"loop_order": "sequential", "lr": "3e-4"}
    assert protocols.layer_values(protocol, quick, explicit) == {
        "pairs": "top2", "iterations": 100, "loop_order": "sequential", "lr": "3e-4"}
    assert protocols.layer_values(protocol, {}, {}) == protocol


# -- the option through build_plan ---------------------------------------------------------------------------
def test_default_protocol_is_paper_and_lands_in_every_trial(in_tmp):
    plan = plan_of(["disentangle", "--dry-run"])
    paper = protocols.bundle("disentangle", "paper")
    assert {t["protocol"] for t in plan.trials} == {"paper"}
    assert all({k: t[k] for k in paper} == paper for t in plan.trials)
    assert plan.trials[0]["iterations"] == STUDY_LOOP["iterations"]  # the study's loop under the protocol


def test_quick_keeps_the_protocol_and_sets_only_loop_keys(in_tmp):
    plan = plan_of(["disentangle", "--quick", "--protocol", "seed"])
    seed = protocols.bundle("disentangle", "seed")
    assert {t["protocol"] for t in plan.trials} == {"seed"}
    assert all({k: t[k] for k in seed} == seed for t in plan.trials)
    assert all(t["iterations"] == QUICK_LOOP["iterations"] for t in plan.trials)


@pytest.mark.parametrize("extra, label, norm", [
    (["--set", "normalize_grads=none"], "seed+custom", "none"),  # a protocol value changed
    (["--set", "normalize_grads=batch"], "seed", "batch"),  # set to the protocol's own value
    (["--iterations", "40", "--set", "lr=3e-4"], "seed", "batch"),  # not protocol fields
])
def test_explicit_values_win_and_only_changed_protocol_values_make_it_custom(in_tmp, extra, label, norm):
    plan = plan_of(["disentangle", "--quick", "--protocol", "seed", *extra])
    assert {t["protocol"] for t in plan.trials} == {label}
    assert {t["normalize_grads"] for t in plan.trials} == {norm}


def test_protocol_is_logged_and_keys_the_configuration_but_never_reaches_the_science(in_tmp):
    seed = plan_of(["disentangle", "--quick", "--protocol", "seed"]).trials[0]
    custom = plan_of(["disentangle", "--quick", "--protocol", "seed", "--set", "normalize_grads=none"]).trials[0]
    params = resolved_params(seed)
    assert params["protocol"] == "seed" and params["loop_order"] == "deferred"
    assert set(params) - {"protocol"} == {f for f in DisentangleConfig.__dataclass_fields__}
    config, _ = trial_configs(seed)  # the label is dropped before the typed config is built
    assert config.pairs == "consecutive_images"
    relabelled = {**seed, "protocol": "seed+custom"}
    assert config_key(relabelled) != config_key(seed)  # runs under another label never share a group
    assert resolved_params(custom)["protocol"] == "seed+custom"


def test_anomaly_flags_override_the_protocol(in_tmp, mvtec_root):
    base = ["anomaly", "--dataset", "mvtec", "--category", "bottle", "--data-dir", str(mvtec_root[0]), "--quick",
            "--protocol", "seed"]
    trial = plan_of(base).trials[0]
    assert (trial["protocol"], trial["eval_set"], trial["model_selection"]) == ("seed", "defective", "test_auroc")
    assert trial["image_size"] == 64  # --quick's size key on top of the protocol
    assert anomaly_resolved(trial)["protocol"] == "seed"
    assert trial_config(trial).eval_set == "defective"
    flagged = plan_of([*base, "--attention", "paper"]).trials[0]
    assert (flagged["protocol"], flagged["attention"]) == ("seed+custom", "paper")
    layered = plan_of([*base, "--layer", "encoder.layer2.1.conv2"]).trials[0]  # not a protocol field
    assert layered["protocol"] == "seed"


# -- the command line ------------------------------------------------------------------------------------------
def test_unknown_protocol_fails_in_one_line_listing_the_names(in_tmp, capsys):
    import ray

    with pytest.raises(SystemExit) as exit_:
        main(["disentangle", "--quick", "--protocol", "kim"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().count("\n") == 0
    assert all(f"'{name}'" in err for name in protocols.PROTOCOL_NAMES)
    assert not ray.is_initialized()


@pytest.mark.parametrize("name", protocols.PROTOCOL_NAMES)
def test_dry_run_prints_the_bundle(in_tmp, capsys, name):
    assert main(["disentangle", "--dry-run", "--quick", "--protocol", name]) == 0
    out = capsys.readouterr().out
    assert f"protocol {name}:" in out
    for key, value in protocols.bundle("disentangle", name).items():
        assert any(line.split() == [key, "=", str(value)] for line in out.splitlines()), key


def test_dry_run_names_the_overridden_values(in_tmp, capsys):
    assert main(["disentangle", "--dry-run", "--quick", "--set", "pairs=top2"]) == 0
    out = capsys.readouterr().out
    assert "protocol paper+custom:" in out
    assert "overridden by flags or --set: pairs = top2" in out


def test_rbm_protocols_are_reached_through_the_same_function():
    from search_spaces.rbm import RBM_PROTOCOLS

    assert protocols.bundle("rbm", "seed") == RBM_PROTOCOLS["seed"]
    assert protocols.protocol_fields("rbm") == tuple(RBM_PROTOCOLS["seed"]) == tuple(RBM_PROTOCOLS["paper"])
    with pytest.raises(Exception, match="has no RBM"):
        protocols.bundle("rbm", "authors")
