"""Scores of the latent code whose gradient gives an anomaly attention map (Liu et al., CVPR 2020, Sec. 3.1).

An attention map is Grad-CAM on a scalar score s_b of image b's latent code (``vae_attention.attention``):
α_k = mean_ij ∂s_b/∂A_k,ij, M = act(Σ_k α_k A_k). Every score here is a per-image (B,) tensor that is a
differentiable function of the encoder outputs (μ, log σ²) of that image alone, so the gradient of
``score.sum()`` w.r.t. a layer's activations holds each image's own gradient in its row.

* ``mean_sum_score``: s_b = Σ_i μ_bi, the score the paper uses for its results and the authors' code
  computes (liuem607/expVAE, ``code/gradcam.py``: ``PropBase.backward``, ``score_fc = sum(mu)``).
* ``normal_difference_score`` (``score=normal_diff``): the paper's second score, Eqs. 3–4. With the inlier
  (training) embeddings summarised per latent dimension i as X_i ~ N(m_i, v_i) and the test image's posterior
  Y_i ~ N(μ_i, σ_i²), the difference U_i = X_i − Y_i is normal ("normal difference distribution", Eq. 3):
      U_i ~ N(m_i − μ_i, v_i + σ_i²),
  with density (Eq. 4)
      p_U_i(u) = (2π (v_i + σ_i²))^(−1/2) · exp(−(u − (m_i − μ_i))² / (2 (v_i + σ_i²))),
  and the score is s_b = Σ_i p_U_i(u). The paper never says what u is (the report, Sec. 5.2: "a u is
  mentioned, but there is no mention of what this u might refer to"); we choose **u = 0**, the density that the
  test code coincides with an inlier code, a deterministic per-dimension "normality" of the image (high for
  inliers). Evaluating p_U at a u *sampled from U* instead would make the score independent of μ (the
  standardised residual no longer involves μ), so its gradient w.r.t. μ would vanish. The inlier summary
  (m, v) is ``inlier_statistics``: mean and variance (ddof = 0) of the encoder means μ over the inlier
  training set, the "mean and variance of the inlier training embeddings".
* ``seed_normal_difference_score``: what the report's code computes under ``inference_mode='normal_diff'``
  (Carmoondedraak/FACT-2021, ``expVAE_pl/vae_model.py``: ``VAE.norm_diff_reparametrize``; inlier summary
  ``expVAE_pl/utils.py``: ``calc_latent_mu_var``, see ``seed_inlier_statistics``). It differs from the paper's
  reading above in two ways: (1) X's variance is exp(mean over the training set of log σ²) — the geometric
  mean of the posterior variances, not the spread of the μ's; (2) u is random: u = z_x + z_y with one draw
  z_x ~ N(m, exp(mean log σ²)) shared by the batch and z_y ~ N(μ, σ²) per image, i.e. a sample of X + Y, not
  of X − Y, so the map is stochastic and differs between recomputations. The density is Eq. 4's, summed over
  dimensions (the report also sums over the batch, which has the same gradient).

The authors' code (liuem607/expVAE) has no normal-difference score: ``test_expVAE.py`` passes
``mu_avg, logvar_avg = 0, 1`` to ``gradcam.backward``, which ignores them and backpropagates Σμ.

Plugging a score into attention maps: ``attention_maps`` in ``vae_attention.attention`` takes only the fixed
score names today. A score callable ``f(mu, logvar) -> (B,)`` plugs in by taking its gradient instead of
that of ``mu.sum()`` on the captured activation; the functions here have that signature once the inlier
statistics are bound (``functools.partial``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from vae_attention.errors import ConfigError

__all__ = [
    "inlier_statistics",
    "mean_sum_score",
    "normal_difference_density",
    "normal_difference_score",
    "seed_inlier_statistics",
    "seed_normal_difference_score",
]


def _as_codes(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ConfigError(f"{name} must be a non-empty (B, z_dim) batch of latent codes, got {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        raise ConfigError(f"{name} must be floating point, got {t.dtype}")
    return t


def inlier_statistics(mu_batches: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per latent dimension of the encoder means μ over the inlier training set, float64 CPU.

    ``mu_batches``: (B, z_dim) batches of μ (one pass, streamed: batches are merged with Chan et al.'s pairwise
    update in float64, so the result equals the two-pass ``mean``/``var(ddof=0)`` of all rows concatenated).
    The variance is the population variance (divisor N): the summary of the inlier embeddings, X in Eq. 3.
    """
    count, mean, m2 = 0, None, None
    for b, batch in enumerate(mu_batches):
        x = _as_codes(batch, f"mu_batches[{b}]").detach().to("cpu", torch.float64)
        if mean is not None and x.shape[1] != mean.shape[0]:
            raise ConfigError(f"mu_batches[{b}] has {x.shape[1]} latent dims, earlier batches {mean.shape[0]}")
        n_b, mean_b = x.shape[0], x.mean(dim=0)
        m2_b = (x - mean_b).pow(2).sum(dim=0)
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta.pow(2) * (count * n_b / total)
        count = total
    if mean is None:
        raise ConfigError("inlier_statistics: no batches of inlier codes given")
    return mean, m2 / count


def seed_inlier_statistics(
    mu_batches: Iterable[Any], logvar_batches: Iterable[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The report's inlier summary: (mean of μ, mean of log σ²) over the training set, float64 CPU.

    Source: Carmoondedraak/FACT-2021, ``expVAE_pl/utils.py``: ``calc_latent_mu_var`` (concatenates the
    encoder's μ and log σ² over ``train_dataloader()``, which shuffles and, for MVTec, augments, and returns
    their means over images). The second value is a log-variance: the report's X has variance exp(it).
    """
    mus = [_as_codes(m, f"mu_batches[{b}]").detach().to("cpu", torch.float64) for b, m in enumerate(mu_batches)]
    lvs = [_as_codes(v, f"logvar_batches[{b}]").detach().to("cpu", torch.float64)
           for b, v in enumerate(logvar_batches)]
    if not mus:
        raise ConfigError("seed_inlier_statistics: no batches of inlier codes given")
    mu, lv = torch.cat(mus), torch.cat(lvs)
    if mu.shape != lv.shape:
        raise ConfigError(f"mu batches {tuple(mu.shape)} and logvar batches {tuple(lv.shape)} must match")
    return mu.mean(dim=0), lv.mean(dim=0)


def mean_sum_score(mu: torch.Tensor, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """s_b = Σ_i μ_bi (the paper's score for its results; expVAE ``gradcam.py``), (B,); ``logvar`` unused."""
    return _as_codes(mu, "mu").sum(dim=1)


def _stat(x: Any, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
    if t.dim() != 1 or t.shape[0] != like.shape[1]:
        raise ConfigError(f"{name} must be a ({like.shape[1]},) vector, got shape {tuple(t.shape)}")
    return t


def normal_difference_density(
    u: Any, mu: torch.Tensor, var: torch.Tensor, inlier_mean: Any, inlier_var: Any
) -> torch.Tensor:
    """Eq. 4 of Liu et al. per image and dimension, (B, z_dim): the N(m − μ, v + σ²) density at ``u``.

    ``mu``/``var``: the test posteriors' means and variances (B, z_dim); ``inlier_mean`` m and ``inlier_var``
    v: (z_dim,); ``u``: a number or a tensor broadcastable to (B, z_dim). Differentiable in every tensor.
    """
    mu = _as_codes(mu, "mu")
    m = _stat(inlier_mean, mu, "inlier_mean")
    v = _stat(inlier_var, mu, "inlier_var")
    total = v + var
    u = torch.as_tensor(u, dtype=mu.dtype, device=mu.device)
    return torch.exp(-(u - (m - mu)).pow(2) / (2.0 * total)) / torch.sqrt(2.0 * math.pi * total)


def normal_difference_score(
    mu: torch.Tensor, logvar: torch.Tensor, inlier_mean: Any, inlier_var: Any, *, u: Any = 0.0
) -> torch.Tensor:
    """The paper's normal-difference score (Eqs. 3–4; module docstring), (B,): s_b = Σ_i p_U_bi(u).

    ``mu``/``logvar``: the encoder outputs for the test batch (B, z_dim); ``inlier_mean``/``inlier_var``: from
    ``inlier_statistics`` on the inlier training codes; ``u`` = 0 by default (our reading; the paper leaves u
    undefined). Higher = more inlier-like; under the paper's ReLU the map keeps the regions that raise it
    (negate the score for the opposite), under the authors' |·| the sign does not matter. Deterministic.
    """
    mu = _as_codes(mu, "mu")
    logvar = _as_codes(logvar, "logvar")
    if logvar.shape != mu.shape:
        raise ConfigError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    return normal_difference_density(u, mu, logvar.exp(), inlier_mean, inlier_var).sum(dim=1)


def seed_normal_difference_score(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    inlier_mean: Any,
    inlier_logvar: Any,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The report's ``normal_diff`` score (``VAE.norm_diff_reparametrize``; module docstring), (B,).

    With (m, l) = ``seed_inlier_statistics``: ε_x ~ N(0, I_z) once for the batch, then ε_y ~ N(0, I) per image
    (drawn in that order from ``generator``; the report drew both from the global RNG via ``rsample``),
    u = (m + e^{l/2} ε_x) + (μ + σ ε_y), and s_b = Σ_i p_U_bi(u_bi) with Eq. 4's v = e^l. The reparameterised
    u carries gradient, as in the report.
    """
    mu = _as_codes(mu, "mu")
    logvar = _as_codes(logvar, "logvar")
    if logvar.shape != mu.shape:
        raise ConfigError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    m = _stat(inlier_mean, mu, "inlier_mean")
    lv = _stat(inlier_logvar, mu, "inlier_logvar")
    draw_on = generator.device if generator is not None else torch.device("cpu")
    eps_x = torch.randn(mu.shape[1], generator=generator, device=draw_on, dtype=mu.dtype).to(mu.device)
    eps_y = torch.randn(mu.shape, generator=generator, device=draw_on, dtype=mu.dtype).to(mu.device)
    u = (m + torch.exp(lv / 2) * eps_x) + (mu + torch.exp(logvar / 2) * eps_y)
    return normal_difference_density(u, mu, logvar.exp(), m, lv.exp()).sum(dim=1)
