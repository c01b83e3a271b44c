"""FactorVAE disentanglement metric (Kim & Mnih, 2018) as two functions, one per published definition.

Source of the definition: H. Kim and A. Mnih, "Disentangling by Factorising", ICML 2018
(arXiv:1802.05983), Section 4. For one *vote*, pick a factor k, draw L observations that share
the value of factor k while every other factor varies, encode them, divide each latent dimension
by its empirical scale over the data, and take the dimension d with the smallest variance across
the L codes. The pair (d, k) is one training example of a majority-vote classifier C(d) = argmax_k
V[k, d], where V counts votes; the score is the classifier's accuracy. Dimensions collapsed to the
prior are left out before the argmin.

``factor_vae_metric`` follows disentanglement_lib (Locatello et al., ICML 2019),
``evaluation/metrics/factor_vae.py`` with its study config (L=64, 10000 training votes, 5000
evaluation votes, 10000 observations for the global variances, ``prune_dims.threshold=0.05``):

1. ``global_var = var(mu(x), ddof=1)`` over ``num_variance_estimate`` observations with random factors.
2. active dims: ``sqrt(global_var) >= prune_threshold``; none active -> both accuracies 0.0.
3. each vote: k ~ U{0..K-1}; ``batch_size`` random factor rows, column k set to row 0's value;
   ``argmin over active dims of var(mu, ddof=1) / global_var`` (index counted within the active
   dims) -> V[k, argmin].
4. ``C = argmax_k V_train``; ``accuracy = sum_d V[C(d), d] / sum V`` on the training votes and,
   with the same C, on a fresh set of ``num_eval`` evaluation votes.

``seed_variant_metric`` follows the code used by the reproducibility report, which adopts
nicolasigor/FactorVAE (``vae_dsprites_v2.py``, ``evaluate_disentanglement``):

1. votes are stratified: ``num_votes // K`` per factor (800 // 5 = 160 on dSprites); each vote draws
   one value v of factor k uniformly and L = 100 random factor rows with column k set to v (the
   seed code draws L images with replacement among those with factor k = v: the same law on
   full-factorial data such as dSprites).
2. all vote codes (mu, logvar) are encoded; ``scale = std(mu, ddof=1)`` over all of them; a dim is
   active iff its mean KL(N(mu, exp(logvar)) || N(0, 1)) = ``0.5*(mu^2 + exp(logvar) - 1 - logvar)``
   over all vote samples is > 0.01 nats.
3. each vote: ``argmin over active dims of var(mu / scale, ddof=1)``; majority-vote classifier and
   its accuracy on the SAME votes, reported as both ``train_accuracy`` and ``eval_accuracy``.

Each function's defaults are its own source's values (dlib: L = 64, 10000 + 5000 votes; seed code:
L = 100, 800 votes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from vae_attention.errors import ConfigError

# The caller's model sees at most this many images per call: a 64x64 dSprites batch of 1024 is
# 16 MiB of float32 input, far below the activations of a conv encoder on one GPU.
ENCODE_CHUNK = 1024

# Seed-code constants (nicolasigor/FactorVAE): L, total votes, KL tolerance in nats.
SEED_L = 100
SEED_VOTES = 800
SEED_KL_TOL = 1e-2


def factor_vae_metric(
    representation_fn: Callable[[Any], Any],
    dataset: Any,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
) -> dict[str, float | int]:
    """disentanglement_lib's FactorVAE metric of ``representation_fn`` on ``dataset`` (module docstring).

    ``representation_fn(x)`` maps a batch from ``dataset.sample_observations_from_factors`` to
    ``mu`` of shape (n, d) or to ``(mu, logvar)`` (logvar unused); run it under ``torch.no_grad()``
    yourself. When ``dataset`` has ``index_of(factors)``, every factor row of the evaluation is drawn
    first and each distinct image is encoded once; the result equals the uncached one for a
    deterministic representation, because the factor draws from ``rng`` are the same either way.

    Returns numeric values only: ``train_accuracy``, ``eval_accuracy``, ``num_active_dims``,
    ``num_encoded`` (images passed to ``representation_fn``), ``num_drawn`` (factor rows drawn),
    ``batch_size`` (the L used), ``num_votes`` (votes cast) and ``elapsed_s``.
    """
    start = time.perf_counter()
    sizes = _factor_sizes(dataset)
    _check_int("batch_size", batch_size, 2)
    _check_int("num_train", num_train, 1)
    _check_int("num_eval", num_eval, 1)
    _check_int("num_variance_estimate", num_variance_estimate, 2)
    if prune_threshold < 0:
        raise ConfigError(f"factor_vae_metric: prune_threshold must be >= 0, got {prune_threshold}")
    out = _dlib(representation_fn, dataset, rng, sizes, batch_size, num_train, num_eval,
                num_variance_estimate, prune_threshold)
    out["elapsed_s"] = time.perf_counter() - start
    return out


def seed_variant_metric(
    representation_fn: Callable[[Any], Any],
    dataset: Any,
    rng: np.random.Generator,
    *,
    batch_size: int = SEED_L,
    num_votes: int = SEED_VOTES,
) -> dict[str, float | int]:
    """The reproducibility report's FactorVAE metric (nicolasigor/FactorVAE; module docstring).

    ``batch_size`` is L, ``num_votes`` the requested vote count (cast: ``num_votes // K`` per factor).
    ``representation_fn`` must return ``(mu, logvar)``: dims are pruned by their KL to the prior. Same
    caching and return values as ``factor_vae_metric``; ``train_accuracy == eval_accuracy`` (one vote set).
    """
    start = time.perf_counter()
    sizes = _factor_sizes(dataset)
    _check_int("batch_size", batch_size, 2, "seed_variant_metric")
    # Stratified votes need at least one per factor.
    _check_int("num_votes", num_votes, int(sizes.size), "seed_variant_metric")
    out = _seed(representation_fn, dataset, rng, sizes, batch_size, num_votes)
    out["elapsed_s"] = time.perf_counter() - start
    return out


def _factor_sizes(dataset) -> np.ndarray:
    sizes = np.asarray(dataset.factor_sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0 or np.any(sizes < 1):
        raise ConfigError(f"factor_vae_metric: dataset.factor_sizes must be positive ints, got {sizes.tolist()}")
    return sizes


def _check_int(name: str, value: Any, minimum: int, caller: str = "factor_vae_metric") -> None:
    # ddof=1 variances need two samples each; a vote set must be non-empty to have an accuracy.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{caller}: {name} must be an int >= {minimum}, got {value!r}")


def _dlib(representation_fn, dataset, rng, sizes, big_l, num_train, num_eval, num_var, threshold):
    num_factors = sizes.size
    num_votes = num_train + num_eval
    # All factor draws happen before any encoding, so the optional cache (and whatever rng use
    # sample_observations_from_factors makes) cannot shift them.
    var_factors = _sample_factors(dataset, num_var, rng, num_factors)
    ks = rng.integers(num_factors, size=num_votes)
    vote_factors = _sample_factors(dataset, num_votes * big_l, rng, num_factors).reshape(
        num_votes, big_l, num_factors)
    rows = np.arange(num_votes)
    vote_factors[rows, :, ks] = vote_factors[rows, 0, ks][:, None]

    mu_var, _, codes = _encode(representation_fn, dataset, rng, var_factors, _NO_CODES)
    global_var = np.var(mu_var, axis=0, ddof=1)
    # A zero-variance dim would give 0/0 ratios; it can only pass the prune test at threshold 0.
    active = (np.sqrt(global_var) >= threshold) & (global_var > 0)
    base = {"num_drawn": num_var + num_votes * big_l, "batch_size": big_l, "num_votes": num_votes}
    if not active.any():
        # Early exit skips ~num_votes*L = 960k encodes for a fully collapsed model.
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0,
                "num_encoded": codes.num_encoded, **base}

    mu, _, codes = _encode(representation_fn, dataset, rng, vote_factors.reshape(-1, num_factors), codes)
    argmins = dlib_vote_argmins(mu.reshape(num_votes, big_l, -1), global_var, active)
    num_active = int(active.sum())
    train_votes = vote_matrix(ks[:num_train], argmins[:num_train], num_factors, num_active)
    eval_votes = vote_matrix(ks[num_train:], argmins[num_train:], num_factors, num_active)
    train_acc, eval_acc = majority_vote_accuracy(train_votes, eval_votes)
    # disentanglement_lib reports len(active_dims), the length of the boolean mask, i.e. the
    # total latent size; this is a known bug there. We report the number of active dims.
    return {"train_accuracy": train_acc, "eval_accuracy": eval_acc, "num_active_dims": num_active,
            "num_encoded": codes.num_encoded, **base}


def _seed(representation_fn, dataset, rng, sizes, big_l, votes):
    num_factors = sizes.size
    per_factor = votes // num_factors
    # The seed code divides by the requested count; dividing by the votes cast differs only when
    # num_votes is not a multiple of the factor count (800 = 5 * 160 on dSprites).
    num_votes = per_factor * num_factors
    ks = np.repeat(np.arange(num_factors), per_factor)
    values = rng.integers(sizes[ks])
    factors = _sample_factors(dataset, num_votes * big_l, rng, num_factors).reshape(
        num_votes, big_l, num_factors)
    factors[np.arange(num_votes), :, ks] = values[:, None]

    mu, logvar, codes = _encode(representation_fn, dataset, rng, factors.reshape(-1, num_factors), _NO_CODES)
    if logvar is None:
        raise ConfigError("seed_variant_metric prunes by KL to the prior and needs representation_fn to "
                          "return (mu, logvar)")
    scale = np.std(mu, axis=0, ddof=1)
    mean_kl = np.mean(0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar), axis=0)
    # The seed code divides by a zero scale (NaN ratios); a dim constant over 80k codes carries no
    # information about any factor, so it is dropped instead.
    active = (mean_kl > SEED_KL_TOL) & (scale > 0)
    base = {"num_drawn": num_votes * big_l, "num_encoded": codes.num_encoded,
            "batch_size": big_l, "num_votes": num_votes}
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0, **base}
    # ddof only rescales every dim's variance by the same n/(n-1), so the argmin (and the score)
    # equals the seed code's ddof=0 choice.
    argmins = dlib_vote_argmins(mu.reshape(num_votes, big_l, -1), scale**2, active)
    num_active = int(active.sum())
    votes_mat = vote_matrix(ks, argmins, num_factors, num_active)
    acc, _ = majority_vote_accuracy(votes_mat, votes_mat)
    return {"train_accuracy": acc, "eval_accuracy": acc, "num_active_dims": num_active, **base}


def dlib_vote_argmins(codes: np.ndarray, global_var: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Per vote, ``argmin_j var(codes[v, :, a_j], ddof=1) / global_var[a_j]`` over active dims a_j.

    ``codes`` has shape (votes, L, d); the returned index counts within the active dims, as in
    disentanglement_lib. var(z / s) = var(z) / s^2, so the seed variant's normalised codes give
    the same argmin with ``global_var = scale**2``.
    """
    local_var = np.var(codes[:, :, active], axis=1, ddof=1)
    return np.argmin(local_var / global_var[active], axis=1)


def vote_matrix(ks: np.ndarray, argmins: np.ndarray, num_factors: int, num_active: int) -> np.ndarray:
    """V[k, j] = number of votes with fixed factor k whose least-variance active dim is j."""
    votes = np.zeros((num_factors, num_active), dtype=np.int64)
    np.add.at(votes, (ks, argmins), 1)
    return votes


def majority_vote_accuracy(train_votes: np.ndarray, eval_votes: np.ndarray) -> tuple[float, float]:
    """Accuracy of C(j) = argmax_k train_votes[k, j] on both vote matrices.

    disentanglement_lib's matrix has one column per latent dim, not per active dim; the extra
    columns hold no votes, so the accuracies are the same. Ties go to the lowest factor index
    (np.argmax), and a dim with no training votes predicts factor 0, both as in dlib.
    """
    classifier = np.argmax(train_votes, axis=0)
    cols = np.arange(train_votes.shape[1])
    train = float(train_votes[classifier, cols].sum() / train_votes.sum())
    evaluation = float(eval_votes[classifier, cols].sum() / eval_votes.sum())
    return train, evaluation


def _sample_factors(dataset, n, rng, num_factors):
    factors = np.array(dataset.sample_factors(n, rng), dtype=np.int64)
    if factors.shape != (n, num_factors):
        raise ConfigError(f"factor_vae_metric: dataset.sample_factors({n}) returned shape {factors.shape}, "
                          f"expected ({n}, {num_factors}) to match factor_sizes")
    return factors


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


class _Codes(NamedTuple):
    """Codes encoded so far in one metric call; ``keys`` are sorted image indices (cache only)."""

    keys: np.ndarray
    mu: np.ndarray | None
    logvar: np.ndarray | None
    num_encoded: int


_NO_CODES = _Codes(np.zeros(0, dtype=np.int64), None, None, 0)


def _encode(fn, dataset, rng, factors: np.ndarray, codes: _Codes):
    """Codes for ``factors`` rows, plus the updated ``codes`` record.

    With ``dataset.index_of`` each distinct image is encoded once across all calls sharing
    ``codes`` (dSprites: ~970k dlib rows hit ~540k of 737k images, so ~45% fewer encodes);
    without it every row is encoded as drawn.
    """
    index_of = getattr(dataset, "index_of", None)
    if index_of is None:
        mu, logvar = _run(fn, dataset, rng, factors, codes)
        return mu, logvar, codes._replace(mu=mu, logvar=logvar, num_encoded=codes.num_encoded + len(mu))
    idx = np.asarray(index_of(factors), dtype=np.int64).reshape(len(factors))
    uniq, first = np.unique(idx, return_index=True)
    new = ~np.isin(uniq, codes.keys)
    if new.any():
        mu, logvar = _run(fn, dataset, rng, factors[first[new]], codes)
        keys = np.concatenate([codes.keys, uniq[new]])
        order = np.argsort(keys, kind="stable")
        codes = _Codes(keys[order], _append(codes.mu, mu)[order],
                       None if logvar is None else _append(codes.logvar, logvar)[order],
                       codes.num_encoded + len(mu))
    pos = np.searchsorted(codes.keys, idx)
    return codes.mu[pos], (None if codes.logvar is None else codes.logvar[pos]), codes


def _append(old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    return new if old is None else np.concatenate([old, new])


def _run(fn, dataset, rng, factors: np.ndarray, codes: _Codes):
    """Encode ``factors`` rows in order, at most ENCODE_CHUNK images per call of ``fn``."""
    mus, logvars = [], []
    # Whether earlier calls returned logvar; a mix would silently drop logvar for some images.
    expect_logvar = None if codes.mu is None else codes.logvar is not None
    for lo in range(0, len(factors), ENCODE_CHUNK):
        chunk = factors[lo:lo + ENCODE_CHUNK]
        out = fn(dataset.sample_observations_from_factors(chunk, rng))
        has_logvar = isinstance(out, (tuple, list))
        if expect_logvar is not None and has_logvar != expect_logvar:
            raise ConfigError("factor_vae_metric: representation_fn returned mu on some batches "
                              "and (mu, logvar) on others")
        expect_logvar = has_logvar
        mu = _to_numpy(out[0] if has_logvar else out)
        if mu.ndim != 2 or mu.shape[0] != len(chunk):
            raise ConfigError(f"factor_vae_metric: representation_fn must return mu of shape "
                              f"({len(chunk)}, d), got {mu.shape}")
        mus.append(mu)
        if has_logvar:
            logvars.append(_to_numpy(out[1]).reshape(mu.shape))
    return np.concatenate(mus), (np.concatenate(logvars) if logvars else None)
