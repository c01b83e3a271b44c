"""Known-answer tests of the FactorVAE metric on a tiny full-factorial toy data set.

An observation is its own factor row (as a (1, 1, K) float tensor), so the representations below
are exact functions of the factors and the expected scores follow from the definition alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vae_attention.errors import ConfigError
from vae_attention.metrics import factor_vae_metric, seed_variant_metric
from vae_attention.metrics.factor_vae import dlib_vote_argmins, majority_vote_accuracy, vote_matrix

SIZES = (3, 6, 10, 8, 8)  # 11520 images: small enough that the cache sees repeats
# Small but stable: 500 training votes put ~100 on each of 5 factors.
DLIB_KW = {"batch_size": 64, "num_train": 500, "num_eval": 300, "num_variance_estimate": 2000}
SEED_KW = {"metric": seed_variant_metric}  # the seed code's own L=100 and 800 votes
LOGVAR_CONFIDENT = float(np.log(1e-3))  # KL to N(0,1) ~ 3 nats per dim, well above the 0.01 cut


class ToyData:
    """Uniform full-factorial data; observation = factor values."""

    def __init__(self, sizes=SIZES):
        self.factor_sizes = tuple(sizes)

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(s, size=n) for s in self.factor_sizes], axis=1)

    def sample_observations_from_factors(self, factors, rng):
        return torch.as_tensor(factors, dtype=torch.float32).reshape(len(factors), 1, 1, -1)

    def index_of(self, factors):
        return np.ravel_multi_index(tuple(np.asarray(factors).T), self.factor_sizes)


class NoIndexData:
    """The same data with ``index_of`` hidden, so the metric encodes every row as drawn."""

    def __init__(self, inner):
        self.factor_sizes = inner.factor_sizes
        self.sample_factors = inner.sample_factors
        self.sample_observations_from_factors = inner.sample_observations_from_factors


def _factors(x):
    f = x.reshape(len(x), -1).double()
    return f / (torch.tensor(SIZES[: f.shape[1]], dtype=torch.float64) - 1)


def identity(x):
    # Two constant extra dims: dlib prunes them (std 0 < 0.05).
    f = _factors(x)
    return torch.cat([f, torch.zeros(len(f), 2, dtype=f.dtype)], dim=1)


def identity_with_logvar(x):
    mu = identity(x)
    logvar = torch.zeros_like(mu)
    logvar[:, : len(SIZES)] = LOGVAR_CONFIDENT  # constant dims keep mu=0, logvar=0: KL exactly 0
    return mu, logvar


def permuted(x):
    return identity(x)[:, [3, 1, 2, 0, 4, 5, 6]]


def permuted_with_logvar(x):
    mu, logvar = identity_with_logvar(x)
    return mu[:, [3, 1, 2, 0, 4, 5, 6]], logvar


def zeros(x):
    return np.zeros((len(x), 6))


def zeros_with_logvar(x):
    return np.zeros((len(x), 6)), np.zeros((len(x), 6))


def mixed(x):
    # A fixed entangled linear map: accuracies strictly between chance and 1 that depend on rng.
    mix = np.random.default_rng(7).standard_normal((len(SIZES), len(SIZES)))
    return _factors(x).numpy() @ mix


def noise_fn(seed, with_logvar):
    gen = np.random.default_rng(seed)  # separate from the metric's rng

    def fn(x):
        mu = gen.standard_normal((len(x), 10))
        return (mu, np.full_like(mu, np.log(0.1))) if with_logvar else mu

    return fn


def _run(fn, kw, seed=0, data=None):
    kw = dict(kw)
    metric = kw.pop("metric", factor_vae_metric)
    return metric(fn, data or ToyData(), np.random.default_rng(seed), **kw)


@pytest.mark.parametrize(("fn", "kw"), [(identity, DLIB_KW), (identity_with_logvar, SEED_KW),
                                        (permuted, DLIB_KW), (permuted_with_logvar, SEED_KW)])
def test_factorised_representations_score_one(fn, kw):
    out = _run(fn, kw)
    assert out["eval_accuracy"] >= 0.99
    assert out["train_accuracy"] >= 0.99
    assert out["num_active_dims"] == len(SIZES)


@pytest.mark.parametrize(("fn", "kw"), [(zeros, DLIB_KW), (zeros_with_logvar, SEED_KW)])
def test_collapsed_representation_scores_zero(fn, kw):
    out = _run(fn, kw)
    assert out["eval_accuracy"] <= 0.2
    assert out["num_active_dims"] == 0


def test_dlib_collapsed_model_skips_vote_encoding():
    out = _run(zeros, DLIB_KW, data=NoIndexData(ToyData()))
    assert out["num_encoded"] == DLIB_KW["num_variance_estimate"]


@pytest.mark.parametrize(("with_logvar", "kw"), [(False, DLIB_KW), (True, SEED_KW)])
def test_noise_representation_is_near_chance(with_logvar, kw):
    out = _run(noise_fn(123, with_logvar), kw)
    # Chance is 1/5; majority voting over 10 dims overfits a little, so allow up to ~0.35.
    assert out["eval_accuracy"] < 0.45, out
    assert out["num_active_dims"] == 10


@pytest.mark.parametrize("kw", [DLIB_KW, SEED_KW])
def test_same_seed_same_result(kw):
    fn = mixed if kw is DLIB_KW else (lambda x: (mixed(x), np.full((len(x), 5), LOGVAR_CONFIDENT)))
    a, b = _run(fn, kw, seed=5), _run(fn, kw, seed=5)
    a.pop("elapsed_s")
    b.pop("elapsed_s")
    assert a == b
    assert 0.2 < a["eval_accuracy"] < 1.0  # entangled, so the score depends on the draws
    c = _run(fn, kw, seed=6)
    assert c["eval_accuracy"] != a["eval_accuracy"] or c["train_accuracy"] != a["train_accuracy"]


@pytest.mark.parametrize("kw", [DLIB_KW, SEED_KW])
def test_cache_gives_identical_scores(kw):
    fn = mixed if kw is DLIB_KW else (lambda x: (mixed(x), np.full((len(x), 5), LOGVAR_CONFIDENT)))
    cached = _run(fn, kw, seed=11)
    plain = _run(fn, kw, seed=11, data=NoIndexData(ToyData()))
    for key in ("train_accuracy", "eval_accuracy", "num_active_dims", "num_drawn"):
        assert cached[key] == plain[key]
    assert plain["num_encoded"] == plain["num_drawn"]
    # 53k draws over 11520 images: nearly every image is hit, each encoded once.
    assert cached["num_encoded"] <= min(cached["num_drawn"], int(np.prod(SIZES)))


def test_chunks_never_exceed_1024_images():
    seen = []

    def fn(x):
        seen.append(len(x))
        return identity(x)

    _run(fn, DLIB_KW, data=NoIndexData(ToyData()))
    assert max(seen) <= 1024
    assert sum(seen) == DLIB_KW["num_variance_estimate"] + 800 * 64


def test_seed_variant_resolves_defaults_and_explicit_values():
    out = _run(identity_with_logvar, SEED_KW)
    assert (out["batch_size"], out["num_votes"], out["num_drawn"]) == (100, 800, 80000)
    out = _run(identity_with_logvar, {**SEED_KW, "batch_size": 20, "num_votes": 403})
    assert (out["batch_size"], out["num_votes"]) == (20, 400)  # 403 // 5 = 80 votes per factor


def test_dlib_prunes_small_dim_two_factor_oracle():
    data = ToyData(sizes=(4, 5))

    def fn(x):
        f = x.reshape(len(x), 2).double()
        # Third dim: std = 1e-3 * std(f0) ~ 1.1e-3, below the 0.05 cut but not zero.
        return torch.stack([f[:, 0], 100.0 * f[:, 1], 1e-3 * f[:, 0]], dim=1)

    out = factor_vae_metric(fn, data, np.random.default_rng(3), **DLIB_KW)
    assert out["num_active_dims"] == 2  # dlib itself would report 3 (len of the mask)
    assert out["eval_accuracy"] == 1.0


def test_vote_rule_on_hand_made_votes():
    # Two votes of L=3 over dims (pruned, a, b); global var (., 1, 4).
    codes = np.array([
        [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 2.0, 1.0]],  # var a = 1, b = 1/3 -> ratios 1, 1/12
        [[0.0, 0.0, 0.0], [0.0, 0.1, 2.0], [0.0, 0.2, 4.0]],  # var a = .01, b = 4 -> ratios .01, 1
    ])
    active = np.array([False, True, True])
    argmins = dlib_vote_argmins(codes, np.array([1e-6, 1.0, 4.0]), active)
    assert argmins.tolist() == [1, 0]  # indices within the active dims
    assert vote_matrix(np.array([0, 1]), argmins, 2, 2).tolist() == [[0, 1], [1, 0]]

    train = np.array([[3, 1], [1, 2]])  # classifier: dim 0 -> factor 0, dim 1 -> factor 1
    evaluation = np.array([[1, 0], [2, 2]])
    assert majority_vote_accuracy(train, evaluation) == (5 / 7, 3 / 5)


@pytest.mark.parametrize(("kw", "fn"), [
    (SEED_KW, identity),  # no logvar
    ({"batch_size": 1}, identity),
    ({"num_eval": 0}, identity),
    ({"prune_threshold": -1.0}, identity),
    ({**SEED_KW, "num_votes": 3}, identity_with_logvar),  # fewer votes than factors
    ({**DLIB_KW, "num_variance_estimate": 10}, lambda x: np.zeros(len(x))),  # mu not 2-D
])
def test_bad_input_raises_config_error(kw, fn):
    with pytest.raises(ConfigError) as err:
        _run(fn, kw)
    assert "\n" not in str(err.value)
