"""Loss terms as pure functions: ELBO parts, FactorVAE's TC estimate and discriminator loss, and L_AD.

Units: nats per image (sums over pixels / latent dims, means over the batch). On dSprites a trained VAE has
recon ≈ 30–60 and KL ≈ 20–30 nats, while L_AD lies in [0, 1]: λ·L_AD needs λ ≫ 1 to compete with the ELBO.

The FactorVAE two-optimiser update is written out in ``vae_attention.training.disentangle.step.train_step``;
these functions only compute numbers.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from vae_attention.errors import ConfigError

PairPolicy = Literal["consecutive_dims", "consecutive_images", "random_pair", "top2", "all_pairs"]
PAIR_POLICIES = get_args(PairPolicy)

# Only guards the division for maps with a tiny total response; all-zero pairs are dropped before dividing.
# Map sums at initialisation are ~1e-4 per image, so 1e-12 leaves the ratio untouched.
AD_EPS = 1e-12


def bernoulli_recon_loss(recon_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log p(x|z) under a Bernoulli decoder: BCE with logits, summed over pixels, mean over the batch."""
    return F.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum") / x.shape[0]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²), summed over dims, mean over the batch."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def beta_vae_loss(recon: torch.Tensor, kld: torch.Tensor, beta: float) -> torch.Tensor:
    """β-VAE objective (Higgins et al., 2017): recon + β·KL."""
    return recon + beta * kld


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch: samples of ∏_j q(z_j) (Kim & Mnih, Alg. 1)."""
    keys = torch.rand(z.shape, generator=generator, device=z.device)
    return torch.gather(z, 0, keys.argsort(dim=0))


def discriminator_tc(d_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's estimate of TC(z) = KL(q(z) ‖ ∏ q(z_j)) ≈ E[log D(z) − log(1 − D(z))].

    With two logits, log(D/(1−D)) = logit₀ − logit₁. It is only an estimate and can be negative.
    """
    return (d_logits[:, 0] - d_logits[:, 1]).mean()


def discriminator_loss(d_logits_joint: torch.Tensor, d_logits_permuted: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of telling q(z) (class 0) from permuted samples (class 1), averaged over the two halves.

    Callers pass logits of *detached* codes, so no gradient of this loss reaches the VAE.
    """
    zeros = torch.zeros(d_logits_joint.shape[0], dtype=torch.long, device=d_logits_joint.device)
    ones = torch.ones(d_logits_permuted.shape[0], dtype=torch.long, device=d_logits_permuted.device)
    return 0.5 * (F.cross_entropy(d_logits_joint, zeros) + F.cross_entropy(d_logits_permuted, ones))


def discriminator_accuracy(d_logits_joint: torch.Tensor, d_logits_permuted: torch.Tensor) -> torch.Tensor:
    """Fraction of both halves classified correctly (0.5 = the discriminator is guessing)."""
    right_joint = (d_logits_joint.argmax(dim=1) == 0).float().mean()
    right_perm = (d_logits_permuted.argmax(dim=1) == 1).float().mean()
    return 0.5 * (right_joint + right_perm)


def is_zero_map(maps: torch.Tensor) -> torch.Tensor:
    """True where a map (last two dims) has no positive response, e.g. a ReLU map of an all-negative CAM."""
    return maps.detach().flatten(-2).amax(dim=-1) <= 0


def zero_map_fraction(maps: torch.Tensor, as_tensor: bool = False) -> float | torch.Tensor:
    """Fraction of maps in ``maps`` (…, H, W) that are all zero; logged next to L_AD. ``as_tensor``: a 0-d
    tensor on the maps' device (no host sync: the training step reads it only at report time)."""
    fraction = is_zero_map(maps).float().mean()
    return fraction if as_tensor else float(fraction)


def map_overlap(a1: torch.Tensor, a2: torch.Tensor, eps: float = AD_EPS) -> torch.Tensor:
    """2·Σ_ij min(A¹, A²) / Σ_ij (A¹ + A²) per map pair: 1 for identical maps, 0 for disjoint ones."""
    inter = torch.minimum(a1, a2).flatten(-2).sum(dim=-1)
    total = (a1 + a2).flatten(-2).sum(dim=-1)
    return 2.0 * inter / (total + eps)


def _random_dim_pair(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    draw_on = generator.device if generator is not None else torch.device("cpu")
    first, second = torch.randperm(n, generator=generator, device=draw_on)[:2].tolist()
    return torch.tensor([first, second], device=device)


def top2_dims(maps: torch.Tensor) -> torch.Tensor:
    """Per image, the two dims with the largest total response, chosen without gradient → (B, 2)."""
    return maps.detach().flatten(-2).sum(dim=-1).topk(2, dim=1).indices


def select_pair_dims(policy: str, z_dim: int, generator: torch.Generator | None = None) -> list[int] | None:
    """The latent dims whose maps a training step must compute for ``policy``.

    ``None`` means all of them (``consecutive_dims``, ``all_pairs``, and ``top2``, which ranks all dims before
    recomputing two); ``random_pair`` needs two; ``consecutive_images`` uses one Σμ map per image instead.
    """
    if policy not in PAIR_POLICIES:
        raise ConfigError(f"pairs={policy!r} is not one of {', '.join(PAIR_POLICIES)}")
    if policy == "random_pair":
        return _random_dim_pair(z_dim, generator, torch.device("cpu")).tolist()
    return None


def attention_disentanglement(
    maps: torch.Tensor,
    pairs: PairPolicy = "consecutive_dims",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_AD (Liu et al., 2020, Eq. 6): mean over map pairs of 2·Σmin(A¹, A²) / Σ(A¹ + A²).

    ``maps``: (B, n, H, W) per-latent-dimension maps for the ``*_dims``/``random_pair``/``top2`` policies,
    (B, H, W) one Σμ map per image for ``consecutive_images``. Pairs:
    - ``consecutive_dims``: dims (0,1), (1,2), … of each image (the paper's intent; the seed's "(a,b),(b,c)").
    - ``consecutive_images``: images (0,1), (1,2), … of the batch (what the seed's code computed).
    - ``random_pair``: two distinct dims drawn from ``generator``.
    - ``top2``: per image, the two dims with the highest total response (the choice carries no gradient).
    - ``all_pairs``: every pair of dims (i < j) of each image, n(n−1)/2 of them (see ``ad_map_pairs``).
    For ``random_pair`` and ``top2``, maps with n = 2 are taken as the chosen pair (the training step computes
    only those).
    Pairs whose two maps are both all-zero are dropped (0/0); if every pair is dropped the loss is 0.
    """
    return attention_disentanglement_with_stats(maps, pairs, generator, as_tensors=True)[0]


def ad_map_pairs(
    maps: torch.Tensor,
    pairs: PairPolicy = "consecutive_dims",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sides (A¹, A²) of every map pair L_AD compares under ``pairs`` (see ``attention_disentanglement``).

    Returns two tensors of the same shape (…, P, H, W) whose entries at one index form one pair: (B, n−1, H, W)
    for ``consecutive_dims``, (B−1, H, W) for ``consecutive_images``, (B, 1, H, W) for ``random_pair``/``top2``
    and (B, n(n−1)/2, H, W) for ``all_pairs``, whose pairs are (i, j), i < j, in ``torch.triu_indices`` order
    (memory: n(n−1)/2 copies of a map per image where the others index a view).
    """
    if pairs not in PAIR_POLICIES:
        raise ConfigError(f"pairs={pairs!r} is not one of {', '.join(PAIR_POLICIES)}")
    if pairs == "consecutive_images":
        if maps.dim() != 3 or maps.shape[0] < 2:
            raise ConfigError(f"pairs='consecutive_images' needs (B≥2, H, W) maps, got {tuple(maps.shape)}")
        return maps[:-1], maps[1:]
    if maps.dim() != 4 or maps.shape[1] < 2:
        raise ConfigError(f"pairs={pairs!r} needs (B, n≥2, H, W) per-dimension maps, got {tuple(maps.shape)}")
    if pairs == "consecutive_dims":
        return maps[:, :-1], maps[:, 1:]
    if pairs == "all_pairs":
        first, second = torch.triu_indices(maps.shape[1], maps.shape[1], offset=1, device=maps.device)
        return maps[:, first], maps[:, second]
    if maps.shape[1] == 2:  # the step already computed only the chosen pair
        index = torch.tensor([0, 1], device=maps.device).expand(maps.shape[0], 2)
    elif pairs == "random_pair":
        index = _random_dim_pair(maps.shape[1], generator, maps.device).expand(maps.shape[0], 2)
    else:
        index = top2_dims(maps)
    chosen = torch.gather(maps, 1, index[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
    return chosen[:, :1], chosen[:, 1:]


def _mean_overlap(maps: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """Mean ``map_overlap`` over the pairs that are not both all-zero; 0 (graph kept) if none is left.

    Written without a data-dependent branch (the kept pairs' sum over their count, at least 1), so a CUDA step
    never waits for the device to decide. A dropped pair's overlap is 0/ε = 0 with a zero gradient, so masking
    it out equals leaving it out.
    """
    keep = ~(is_zero_map(a1) & is_zero_map(a2))
    return torch.where(keep, map_overlap(a1, a2), 0.0).sum() / keep.sum().clamp(min=1)


def ad_pair_fractions(a1: torch.Tensor, a2: torch.Tensor, as_tensors: bool = False) -> dict[str, float]:
    """How many of the pairs (from ``ad_map_pairs``) carry no signal, logged next to ``zero_map_fraction``.

    - ``dropped_pair_fraction``: both maps all-zero (0/0): the pair is left out of L_AD's mean.
    - ``zero_score_pair_fraction``: exactly one map all-zero: the pair is kept and scores exactly 0, so L_AD
      can fall by silencing maps (a ReLU map of an all-negative CAM) rather than by separating them.
    - ``num_pairs``: the number of pairs, P per image times the images (B − 1 for ``consecutive_images``).

    ``as_tensors``: the two fractions as float64 0-d tensors on the maps' device (the same numbers, no host sync).
    """
    return _fractions(is_zero_map(a1), is_zero_map(a2), as_tensors)


def _fractions(z1: torch.Tensor, z2: torch.Tensor, as_tensors: bool) -> dict:
    """``ad_pair_fractions`` from the two sides' all-zero flags."""
    num = z1.numel()
    if num == 0:
        return {"dropped_pair_fraction": float("nan"), "zero_score_pair_fraction": float("nan"), "num_pairs": 0}
    dropped = (z1 & z2).sum(dtype=torch.float64) / num
    one_zero = (z1 ^ z2).sum(dtype=torch.float64) / num
    if not as_tensors:
        dropped, one_zero = float(dropped), float(one_zero)
    return {"dropped_pair_fraction": dropped, "zero_score_pair_fraction": one_zero, "num_pairs": num}


def attention_disentanglement_with_stats(
    maps: torch.Tensor,
    pairs: PairPolicy = "consecutive_dims",
    generator: torch.Generator | None = None,
    as_tensors: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(L_AD, ``ad_pair_fractions``) from one choice of pairs (one draw from ``generator`` for ``random_pair``)."""
    if pairs == "all_pairs" and maps.dim() == 4 and maps.shape[1] > 2:  # n = 2: one pair, as consecutive_dims
        return _all_pairs_overlap(maps, as_tensors)
    a1, a2 = ad_map_pairs(maps, pairs, generator)
    return _mean_overlap(maps, a1, a2), ad_pair_fractions(a1, a2, as_tensors)


def _all_pairs_overlap(maps: torch.Tensor, as_tensors: bool) -> tuple[torch.Tensor, dict]:
    """``all_pairs`` without gathering the n(n−1)/2 pair copies of the maps (2 × 47 MB at n = 10, B = 64, 64×64,
    plus their sum and the gathers' scatter backward): Σ(A^i + A^j) = S_i + S_j from the per-map sums S, the
    all-zero test per map, and Σmin(A^i, A^j) from broadcast views, row i against maps i+1…n−1 (the
    ``triu_indices`` order of ``ad_map_pairs``). The same quantity as the gathered form; the denominators are
    summed in another order (float32 rounding, relative ~1e-7)."""
    first, second = torch.triu_indices(maps.shape[1], maps.shape[1], offset=1, device=maps.device)
    inter = torch.cat([torch.minimum(maps[:, i:i + 1], maps[:, i + 1:]).flatten(-2).sum(dim=-1)
                       for i in range(maps.shape[1] - 1)], dim=1)
    totals = maps.flatten(-2).sum(dim=-1)
    overlap = 2.0 * inter / (totals[:, first] + totals[:, second] + AD_EPS)
    zero = is_zero_map(maps)
    z1, z2 = zero[:, first], zero[:, second]
    keep = ~(z1 & z2)
    loss = torch.where(keep, overlap, 0.0).sum() / keep.sum().clamp(min=1)
    return loss, _fractions(z1, z2, as_tensors)
