"""Known-answer tests of the normal-difference anomaly score (Liu et al., Eqs. 3–4) and the report's variant.

Oracles: the density written out by hand for a 2-dim case, ``scipy.stats.norm.pdf``, the hand-derived partial
derivatives of Eq. 4, numpy's two-pass mean/variance, and a numpy re-computation of the report's sampling from
the same seeded draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from vae_attention.anomaly_scores import (
    inlier_statistics,
    mean_sum_score,
    normal_difference_density,
    normal_difference_score,
    seed_inlier_statistics,
    seed_normal_difference_score,
)
from vae_attention.errors import ConfigError

D = torch.float64


def test_hand_computed_two_dims():
    # dim 0: μ = 1, σ² = 1, m = 0, v = 1 -> U ~ N(-1, 2); dim 1: μ = 0, σ² = 3, m = 0, v = 1 -> U ~ N(0, 4).
    mu = torch.tensor([[1.0, 0.0]], dtype=D)
    logvar = torch.tensor([[0.0, math.log(3.0)]], dtype=D)
    m, v = torch.zeros(2, dtype=D), torch.ones(2, dtype=D)
    at_zero = 1 / math.sqrt(4 * math.pi) * math.exp(-1 / 4) + 1 / math.sqrt(8 * math.pi)
    assert normal_difference_score(mu, logvar, m, v).item() == pytest.approx(at_zero, rel=1e-14)
    # u = 1: residuals u - (m - μ) are 2 and 1.
    at_one = 1 / math.sqrt(4 * math.pi) * math.exp(-4 / 4) + 1 / math.sqrt(8 * math.pi) * math.exp(-1 / 8)
    assert normal_difference_score(mu, logvar, m, v, u=1.0).item() == pytest.approx(at_one, rel=1e-14)


def test_density_equals_scipy_normal_pdf():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g, dtype=D), torch.randn(5, 4, generator=g, dtype=D)
    m, v = torch.randn(4, generator=g, dtype=D), torch.rand(4, generator=g, dtype=D) + 0.1
    u = torch.randn(5, 4, generator=g, dtype=D)
    want = norm.pdf(u.numpy(), loc=(m - mu).numpy(), scale=np.sqrt((v + logvar.exp()).numpy()))
    got = normal_difference_density(u, mu, logvar.exp(), m, v)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(normal_difference_score(mu, logvar, m, v, u=u).numpy(), want.sum(1), rtol=1e-12)


def test_gradient_matches_closed_form_partials():
    # p = (2πS)^(-1/2) exp(-r²/2S), r = u - m + μ, S = v + e^l:  ∂p/∂μ = -p r / S,  ∂p/∂l = p (r²/S - 1) e^l / (2S).
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 4, generator=g, dtype=D).requires_grad_()
    logvar = torch.randn(3, 4, generator=g, dtype=D).requires_grad_()
    m, v = torch.randn(4, generator=g, dtype=D), torch.rand(4, generator=g, dtype=D) + 0.1
    normal_difference_score(mu, logvar, m, v).sum().backward()
    with torch.no_grad():
        s = v + logvar.exp()
        r = 0.0 - m + mu
        p = torch.exp(-r**2 / (2 * s)) / torch.sqrt(2 * math.pi * s)
        torch.testing.assert_close(mu.grad, -p * r / s, rtol=1e-12, atol=0)
        torch.testing.assert_close(logvar.grad, p * (r**2 / s - 1) * logvar.exp() / (2 * s), rtol=1e-12, atol=0)


def test_gradient_at_a_layer_is_per_image_chain_rule():
    # A linear "encoder" from a (B, K, h, w) activation A: the score's gradient at A is ∂s/∂μ W_μ + ∂s/∂l W_l,
    # image by image (what Grad-CAM averages into α).
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, 2, 2, generator=g, dtype=D).requires_grad_()
    w_mu, w_lv = torch.randn(12, 4, generator=g, dtype=D), 0.1 * torch.randn(12, 4, generator=g, dtype=D)
    m, v = torch.zeros(4, dtype=D), torch.ones(4, dtype=D)
    mu, logvar = feats.flatten(1) @ w_mu, feats.flatten(1) @ w_lv
    score = normal_difference_score(mu, logvar, m, v)
    (grad_all,) = torch.autograd.grad(score.sum(), feats, retain_graph=True)
    (grad_0,) = torch.autograd.grad(score[0], feats, retain_graph=True)
    assert torch.equal(grad_0[1], torch.zeros_like(grad_0[1]))  # image 0's score ignores image 1
    torch.testing.assert_close(grad_all[0], grad_0[0])
    d_mu, d_lv = torch.autograd.grad(score.sum(), (mu, logvar))
    torch.testing.assert_close(grad_all.flatten(1), d_mu @ w_mu.T + d_lv @ w_lv.T, rtol=1e-12, atol=1e-15)


def test_u_sampled_from_U_would_carry_no_gradient_to_mu():
    # The docstring's reason for u = 0: with u = (m - μ) + sqrt(v + σ²) ε the density no longer depends on μ.
    mu = torch.tensor([[0.5, -1.0]], dtype=D, requires_grad=True)
    logvar = torch.zeros(1, 2, dtype=D)
    m, v, eps = torch.zeros(2, dtype=D), torch.ones(2, dtype=D), torch.tensor([[0.3, -0.7]], dtype=D)
    u = (m - mu) + torch.sqrt(v + logvar.exp()) * eps
    (grad,) = torch.autograd.grad(normal_difference_density(u, mu, logvar.exp(), m, v).sum(), mu)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-15)


def test_inlier_statistics_equal_two_pass_numpy():
    rng = np.random.default_rng(3)
    batches = [rng.normal(5.0, 2.0, size=(n, 3)) for n in (7, 1, 16, 4)]
    mean, var = inlier_statistics(torch.from_numpy(b).float() for b in batches)
    full = np.concatenate([b.astype(np.float32) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), full.var(0, ddof=0), rtol=1e-10)
    assert mean.dtype == torch.float64


def test_seed_inlier_statistics_are_plain_means():
    mu = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]
    lv = [torch.tensor([[0.0, -1.0], [2.0, -3.0]]), torch.tensor([[1.0, -2.0]])]
    mean, mean_logvar = seed_inlier_statistics(mu, lv)
    np.testing.assert_allclose(mean.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(mean_logvar.numpy(), [1.0, -2.0])


def test_seed_score_recomputed_from_the_same_draws():
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(3, 5, generator=g, dtype=D), torch.randn(3, 5, generator=g, dtype=D)
    m, lv = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    got = seed_normal_difference_score(mu, logvar, m, lv, generator=torch.Generator().manual_seed(9))
    draws = torch.Generator().manual_seed(9)
    eps_x = torch.randn(5, generator=draws, dtype=D).numpy()  # one draw for the batch, then one per image
    eps_y = torch.randn(3, 5, generator=draws, dtype=D).numpy()
    mu_, lv_, m_, l_ = (t.numpy() for t in (mu, logvar, m, lv))
    u = (m_ + np.exp(l_ / 2) * eps_x) + (mu_ + np.exp(lv_ / 2) * eps_y)  # a sample of X + Y
    want = norm.pdf(u, loc=m_ - mu_, scale=np.sqrt(np.exp(l_) + np.exp(lv_))).sum(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    again = seed_normal_difference_score(mu, logvar, m, lv, generator=torch.Generator().manual_seed(10))
    assert not torch.allclose(got, again)  # stochastic: another draw gives another score (and map)


def test_seed_score_reaches_mu():
    mu = torch.tensor([[0.2, -0.4]], dtype=D, requires_grad=True)
    score = seed_normal_difference_score(mu, torch.zeros(1, 2, dtype=D), torch.zeros(2, dtype=D),
                                         torch.zeros(2, dtype=D), generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(score.sum(), mu)
    assert grad.abs().sum() > 0


def test_mean_sum_score():
    assert mean_sum_score(torch.tensor([[1.0, 2.0], [3.0, -4.0]])).tolist() == [3.0, -1.0]


def test_invalid_shapes_are_refused():
    mu = torch.zeros(2, 3)
    with pytest.raises(ConfigError):
        normal_difference_score(mu, torch.zeros(2, 4), torch.zeros(3), torch.ones(3))
    with pytest.raises(ConfigError):
        normal_difference_score(mu, torch.zeros(2, 3), torch.zeros(4), torch.ones(4))
    with pytest.raises(ConfigError):
        inlier_statistics([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ConfigError):
        inlier_statistics([])
