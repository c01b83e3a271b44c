"""The FactorVAE metric on (generated) dSprites images with representations whose answer is known."""

import numpy as np
import pytest
import torch

from vae_attention.data import DSprites
from vae_attention.metrics import factor_vae_metric, seed_variant_metric
from vae_attention.training import DisentangleConfig, DisentangleState

SMALL_VOTES = dict(num_train=400, num_eval=200, num_variance_estimate=2000)


@pytest.fixture(scope="module")
def dsprites(tmp_path_factory):
    return DSprites(grid=(3, 6, 10, 16, 16), cache_dir=tmp_path_factory.mktemp("metric_cache"))


def moments(x):
    """Centroid x, centroid y and pixel mass of each sprite: codes for posX, posY and scale only."""
    x = torch.as_tensor(x)[:, 0]
    mass = x.sum(dim=(1, 2))
    coord = torch.arange(64.0)
    cy = (x.sum(dim=2) * coord).sum(dim=1) / mass
    cx = (x.sum(dim=1) * coord).sum(dim=1) / mass
    return torch.stack([cx, cy, mass], dim=1)


@pytest.mark.parametrize("variant", ["dlib", "seed"])
def test_image_moments_disentangle_three_of_five_factors(dsprites, variant):
    """Three dims each track one factor (posX, posY, scale); shape and orientation have none.

    A perfect majority-vote classifier then gets the 3 captured factors' votes right and guesses the other
    two, so the accuracy is ≈ 3/5 plus whatever of the rest lands by chance.
    """
    def rep(x):
        codes = moments(x)
        return (codes, torch.full_like(codes, -5.0)) if variant == "seed" else codes

    if variant == "seed":
        result = seed_variant_metric(rep, dsprites, np.random.default_rng(0), num_votes=SMALL_VOTES["num_train"])
    else:
        result = factor_vae_metric(rep, dsprites, np.random.default_rng(0), **SMALL_VOTES)
    assert result["num_active_dims"] == 3
    assert 0.55 <= result["eval_accuracy"] <= 0.75, result


def test_untrained_vae_scores_in_range_and_evaluation_leaves_training_rng_alone(dsprites):
    state = DisentangleState(DisentangleConfig(d_hidden_units=32, d_hidden_layers=1, eval_size=100), dsprites)
    before = state.rng.bit_generator.state
    result = factor_vae_metric(lambda x: state.representation(x)[0], dsprites, np.random.default_rng(0),
                               batch_size=16, **SMALL_VOTES)
    seed = seed_variant_metric(state.representation, dsprites, np.random.default_rng(0), batch_size=20,
                               num_votes=100)
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and 0.0 <= seed["eval_accuracy"] <= 1.0
    assert state.rng.bit_generator.state == before
