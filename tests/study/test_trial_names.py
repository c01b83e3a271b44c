"""Trial names (display and folder): each study's label from the trial's params plus Ray's trial id, and
Ray's own ``trial_<id>`` for a trial object that carries no params, so that naming never stops a sweep."""

from types import SimpleNamespace

import pytest

from study import anomaly, disentangle, rbm


def _trial(params=None, trial_id="ab12c_00003"):
    return SimpleNamespace(config={} if params is None else {"params": params}, trial_id=trial_id)


def test_each_study_names_a_trial_from_its_params_and_id():
    assert disentangle.trial_name(_trial({"model": "ad_factorvae", "gamma": 10.0, "lambda_ad": 0.5, "seed": 2})) \
        == "adfvae_g10_l0.5_s2_ab12c_00003"
    assert disentangle.trial_name(_trial({"model": "betavae", "beta": 4.0, "seed": 1})) == "betavae_b4_s1_ab12c_00003"
    assert anomaly.trial_name(_trial({"dataset": "mvtec", "category": "bottle", "lr": 1e-4, "seed": 0})) \
        == "mvtec_bottle_lr0.0001_s0_ab12c_00003"
    name = rbm.trial_name(_trial({"protocol": "paper+custom", "digit": 3, "sizes": [784, 500], "k": 1, "lr": 0.1,
                                  "temperature": 0.5, "seed": 7}))
    assert name == "rbm_paper-custom_d3_784-500_k1_lr0.1_t0.5_s7_ab12c_00003" and "/" not in name


@pytest.mark.parametrize("study", [disentangle, anomaly, rbm])
@pytest.mark.parametrize("config", [{}, {"params": None}])
def test_a_trial_without_params_gets_rays_default_name(study, config):
    trial = SimpleNamespace(config=config, trial_id="ab12c_00003")
    assert study.trial_name(trial) == "trial_ab12c_00003"
