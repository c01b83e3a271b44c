"""Loss terms against closed forms, torch.distributions, and hand-made attention maps."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vae_attention import ConfigError, losses
from vae_attention.attention import attention_maps
from vae_attention.models import DSpritesVAE


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1).mean()
    torch.testing.assert_close(losses.gaussian_kl(mu, logvar), expected)
    assert float(losses.gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0


def test_bernoulli_recon_loss_closed_form():
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # two 1×1×2 images
    logits = torch.zeros_like(x)  # p = 0.5 everywhere: log 2 nats per pixel
    assert float(losses.bernoulli_recon_loss(logits, x)) == pytest.approx(2 * math.log(2))
    probs = torch.tensor([[[[0.9, 0.2]]], [[[0.3, 0.4]]]])
    manual = -(x * probs.log() + (1 - x) * (1 - probs).log()).sum() / 2
    torch.testing.assert_close(losses.bernoulli_recon_loss(torch.logit(probs), x), manual)
    assert float(losses.beta_vae_loss(torch.tensor(3.0), torch.tensor(2.0), 4.0)) == 11.0


def test_permute_dims_permutes_each_column_independently():
    z = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    perm = losses.permute_dims(z, torch.Generator().manual_seed(1))
    for j in range(4):
        assert sorted(perm[:, j].tolist()) == z[:, j].tolist()
    # rows are mixed: some row of the permutation is not a row of z
    assert any(not (z == row).all(dim=1).any() for row in perm)
    again = losses.permute_dims(z, torch.Generator().manual_seed(1))
    assert torch.equal(perm, again)


def test_discriminator_terms():
    logits = torch.tensor([[2.0, 0.5], [0.0, 1.0]])
    assert float(losses.discriminator_tc(logits)) == pytest.approx(((2.0 - 0.5) + (0.0 - 1.0)) / 2)
    perm = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    expected = 0.5 * (-F.log_softmax(logits, 1)[:, 0].mean() - F.log_softmax(perm, 1)[:, 1].mean())
    torch.testing.assert_close(losses.discriminator_loss(logits, perm), expected)
    # logits row 0 → class 0 (right), row 1 → class 1 (wrong); perm row 0 right, row 1 wrong
    assert float(losses.discriminator_accuracy(logits, perm)) == 0.5


def _blob(r0, r1, c0, c1, value=1.0, size=8):
    m = torch.zeros(size, size)
    m[r0:r1, c0:c1] = value
    return m


def test_overlap_identical_is_one_and_disjoint_is_zero():
    a = _blob(0, 4, 0, 4)
    b = _blob(4, 8, 4, 8)
    same = torch.stack([a, a])[None]
    apart = torch.stack([a, b])[None]
    assert float(losses.attention_disentanglement(same)) == pytest.approx(1.0)
    assert float(losses.attention_disentanglement(apart)) == 0.0
    # half of a's mass overlaps an equally sized map: 2·8 / (16 + 16) = 0.5
    half = torch.stack([a, _blob(2, 6, 0, 4)])[None]
    assert float(losses.attention_disentanglement(half)) == pytest.approx(0.5)


def test_consecutive_dims_averages_pairs_and_drops_zero_pairs():
    a, b = _blob(0, 4, 0, 4), _blob(4, 8, 4, 8)
    zero = torch.zeros(8, 8)
    # pairs (a,a)=1, (a,b)=0, (b,0)=0, (0,0) dropped → mean over 3 pairs = 1/3
    maps = torch.stack([a, a, b, zero, zero])[None]
    assert float(losses.attention_disentanglement(maps, "consecutive_dims")) == pytest.approx(1 / 3)
    assert losses.zero_map_fraction(maps) == pytest.approx(2 / 5)
    all_zero = torch.zeros(2, 3, 8, 8, requires_grad=True)
    value = losses.attention_disentanglement(all_zero)
    assert float(value.detach()) == 0.0
    value.backward()  # connected to the graph even when every pair is dropped


def test_consecutive_images_pairs_images_of_the_batch():
    a, b = _blob(0, 4, 0, 4), _blob(4, 8, 4, 8)
    maps = torch.stack([a, a, b])  # (B, H, W): pairs (0,1)=1, (1,2)=0
    assert float(losses.attention_disentanglement(maps, "consecutive_images")) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        losses.attention_disentanglement(maps[None], "consecutive_images")


def test_random_pair_draws_two_distinct_dims_from_the_generator():
    a, b = _blob(0, 4, 0, 4), _blob(4, 8, 4, 8)
    maps = torch.stack([a, a, b, b])[None]  # same-blob pairs → 1, cross pairs → 0
    values = set()
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        v = float(losses.attention_disentanglement(maps, "random_pair", g))
        first, second = torch.randperm(4, generator=torch.Generator().manual_seed(seed))[:2].tolist()
        assert first != second
        assert v == pytest.approx(1.0 if (first < 2) == (second < 2) else 0.0)
        values.add(round(v, 6))
    assert values == {0.0, 1.0}
    assert losses.select_pair_dims("random_pair", 10, torch.Generator().manual_seed(0)) is not None
    assert losses.select_pair_dims("consecutive_dims", 10) is None


def test_top2_pairs_the_two_highest_response_dims_per_image():
    a, b, c = _blob(0, 4, 0, 4, 5.0), _blob(0, 4, 0, 4, 4.0), _blob(4, 8, 4, 8, 0.1)
    # image 0: top dims a,b (same place) → 2·4·16 / (9·16) = 8/9; image 1: top dims a,c' (disjoint) → 0
    c_big = _blob(4, 8, 4, 8, 3.0)
    maps = torch.stack([torch.stack([c, a, b]), torch.stack([a, c, c_big])])
    expected = (8 / 9 + 0.0) / 2
    assert float(losses.attention_disentanglement(maps, "top2")) == pytest.approx(expected)
    assert losses.top2_dims(maps).sort(dim=1).values.tolist() == [[1, 2], [0, 2]]


def test_l_ad_gradient_reaches_the_encoder():
    model = DSpritesVAE(generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, x, "encoder.0", score="per_dim", dims=[0, 1, 2], create_graph=True)
    loss = losses.attention_disentanglement(maps)
    assert 0.0 < float(loss.detach()) < 1.0
    loss.backward()
    for name in ["encoder.0.weight", "encoder.2.weight", "encoder.11.weight"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_unknown_pair_policy_is_rejected():
    with pytest.raises(ConfigError, match="pairs="):
        losses.attention_disentanglement(torch.rand(1, 2, 4, 4), "no_such_policy")
