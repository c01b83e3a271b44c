"""Known-answer tests of the L_AD pair policy ``all_pairs`` and the fractions of pairs that carry no signal.

Oracles: values worked out by hand on 1×2 maps, and a brute-force loop over ``itertools.combinations`` that
applies 2·Σmin(A¹, A²) / Σ(A¹ + A²) pair by pair.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from vae_attention.errors import ConfigError
from vae_attention.losses import (
    PAIR_POLICIES,
    ad_map_pairs,
    ad_pair_fractions,
    attention_disentanglement,
    attention_disentanglement_with_stats,
    select_pair_dims,
)

D = torch.float64


def maps_of(*rows) -> torch.Tensor:
    """(1, n, 1, 2) maps from n rows of two pixels."""
    return torch.tensor([[[r] for r in rows]], dtype=D)


def brute_force(maps: torch.Tensor):
    """(mean over kept pairs, dropped fraction, one-zero fraction) over every (i < j) of every image."""
    scores, dropped, one_zero, total = [], 0, 0, 0
    for image in maps:
        for i, j in itertools.combinations(range(image.shape[0]), 2):
            a, b = image[i], image[j]
            total += 1
            za, zb = bool(a.max() <= 0), bool(b.max() <= 0)
            if za and zb:
                dropped += 1
                continue
            one_zero += za != zb
            scores.append(float(2 * torch.minimum(a, b).sum() / (a + b).sum()))
    return sum(scores) / len(scores), dropped / total, one_zero / total


def test_all_pairs_hand_computed():
    # A0 = [1, 0], A1 = [0, 1], A2 = [1, 1]: (0,1) -> 0, (0,2) -> 2·1/3, (1,2) -> 2·1/3.
    maps = maps_of([1, 0], [0, 1], [1, 1])
    assert attention_disentanglement(maps, "all_pairs").item() == pytest.approx(4 / 9, rel=1e-15)
    # consecutive_dims sees (0,1) and (1,2) only.
    assert attention_disentanglement(maps, "consecutive_dims").item() == pytest.approx(1 / 3, rel=1e-15)


def test_zero_maps_hand_computed():
    # A1, A2 all-zero. Pairs: (0,1) 0, (0,2) 0, (0,3) 2·1/5, (1,2) dropped, (1,3) 0, (2,3) 0.
    maps = maps_of([1, 0], [0, 0], [0, 0], [2, 2])
    loss, stats = attention_disentanglement_with_stats(maps, "all_pairs")
    assert loss.item() == pytest.approx((2 / 5) / 5, rel=1e-15)  # mean over the 5 kept pairs
    assert stats == {"dropped_pair_fraction": 1 / 6, "zero_score_pair_fraction": 4 / 6, "num_pairs": 6}
    # consecutive_dims: (0,1) 0, (1,2) dropped, (2,3) 0.
    loss, stats = attention_disentanglement_with_stats(maps, "consecutive_dims")
    assert loss.item() == 0.0
    assert stats == {"dropped_pair_fraction": 1 / 3, "zero_score_pair_fraction": 2 / 3, "num_pairs": 3}


def test_all_pairs_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(3, 5, 4, 4, generator=g, dtype=D))
    maps[0, 1] = 0.0  # a silenced map
    maps[2, 3] = 0.0
    maps[2, 4] = 0.0  # and a pair of them
    loss, stats = attention_disentanglement_with_stats(maps, "all_pairs")
    want_loss, want_dropped, want_one_zero = brute_force(maps)
    assert loss.item() == pytest.approx(want_loss, rel=1e-12)
    assert stats["dropped_pair_fraction"] == pytest.approx(want_dropped)
    assert stats["zero_score_pair_fraction"] == pytest.approx(want_one_zero)
    assert stats["num_pairs"] == 3 * 5 * 4 // 2


def test_all_pairs_order_and_shapes():
    maps = torch.arange(4, dtype=D).reshape(1, 4, 1, 1).expand(2, 4, 3, 3)
    a1, a2 = ad_map_pairs(maps, "all_pairs")
    assert a1.shape == a2.shape == (2, 6, 3, 3)
    assert a1[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 2]
    assert a2[0, :, 0, 0].tolist() == [1, 2, 3, 2, 3, 3]


def test_two_dims_all_pairs_is_consecutive_dims():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(4, 2, 3, 3, generator=g, dtype=D)
    both = [attention_disentanglement(maps, policy) for policy in ("all_pairs", "consecutive_dims")]
    assert torch.equal(*both)


def test_all_pairs_is_differentiable_and_needs_every_dim():
    maps = torch.rand(2, 3, 4, 4, dtype=D, requires_grad=True)
    attention_disentanglement(maps, "all_pairs").backward()
    assert (maps.grad != 0).any()
    assert "all_pairs" in PAIR_POLICIES and select_pair_dims("all_pairs", 10) is None


def test_all_zero_maps_give_a_connected_zero_loss():
    maps = torch.zeros(2, 3, 2, 2, dtype=D, requires_grad=True)
    loss, stats = attention_disentanglement_with_stats(maps, "all_pairs")
    assert loss.item() == 0.0 and loss.requires_grad
    assert stats["dropped_pair_fraction"] == 1.0 and stats["zero_score_pair_fraction"] == 0.0


def test_stats_use_the_loss_draw_for_random_pair():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 6, 3, 3, generator=g, dtype=D)
    loss, stats = attention_disentanglement_with_stats(maps, "random_pair", torch.Generator().manual_seed(5))
    assert torch.equal(loss, attention_disentanglement(maps, "random_pair", torch.Generator().manual_seed(5)))
    assert stats["num_pairs"] == 2


def test_consecutive_images_fractions_and_bad_shapes():
    maps = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]], dtype=D)  # (B=4, 1, 2)
    assert ad_pair_fractions(*ad_map_pairs(maps, "consecutive_images")) == {
        "dropped_pair_fraction": 1 / 3, "zero_score_pair_fraction": 2 / 3, "num_pairs": 3}
    with pytest.raises(ConfigError):
        ad_map_pairs(torch.zeros(2, 1, 3, 3), "all_pairs")
    with pytest.raises(ConfigError):
        ad_map_pairs(torch.zeros(2, 3, 3), "all_pairs")
