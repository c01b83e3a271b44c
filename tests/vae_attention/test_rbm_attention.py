"""RBM attention maps against independent oracles.

Oracles: ``torch.distributions.RelaxedBernoulli`` / ``RelaxedOneHotCategorical`` fed the same uniforms (global
RNG seeded as the injected generator); the hard-sample law as τ → 0; the simplex identity Σ_j z_j = 1 (the seed
score is the batch size); autograd's v ⊙ ∂s/∂v; and a hand computation of Σ_k α_k W_k ⊙ v with the analytic
binary-Concrete derivative ∂y/∂a = y(1 − y)/τ (× 4 for spin units, whose logit is 2a and value 2y − 1).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical

from vae_attention.errors import ConfigError
from vae_attention.models import StackedRBM
from vae_attention.rbm_attention import (
    gradcam_map,
    gradcam_score,
    rbm_attention_maps,
    relaxed_bernoulli,
    relaxed_one_hot,
    seed_map,
    seed_score,
)

SIZES = (784, 16, 9, 4)  # square hidden counts, as the report's


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (two were many times slower on a loaded 2-CPU machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_stack(kind="binary", sizes=SIZES, seed=0):
    return StackedRBM(sizes, kind, generator=torch.Generator().manual_seed(seed), init_std=0.1)


def images(batch=6, seed=1):
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def gen(seed=123):
    return torch.Generator().manual_seed(seed)


def test_relaxed_samplers_equal_torch_distributions_for_the_same_uniforms():
    logits = torch.randn(50, 7, generator=gen(0))
    torch.manual_seed(5)
    expected = RelaxedBernoulli(torch.tensor(0.3), logits=logits).rsample()
    assert torch.allclose(relaxed_bernoulli(logits, 0.3, generator=gen(5)), expected, atol=1e-5)
    torch.manual_seed(6)
    expected = RelaxedOneHotCategorical(torch.tensor(0.1), logits=logits).rsample()
    assert torch.allclose(relaxed_one_hot(logits, 0.1, generator=gen(6)), expected, atol=1e-5)


def test_relaxed_bernoulli_approaches_hard_samples_as_temperature_goes_to_zero():
    n = 20000
    p = torch.tensor([0.1, 0.3, 0.5, 0.8])
    logits = torch.logit(p).expand(n, -1)
    sigma = (p * (1 - p) / n).sqrt()
    near_binary = {}
    for tau in (1.0, 0.1, 0.01):
        y = relaxed_bernoulli(logits, tau, generator=gen(0))
        assert ((y > 0.5).float().mean(0) - p).abs().max() < 4 * sigma.max()  # P(y > ½) = p for every τ
        near_binary[tau] = float(((y < 0.01) | (y > 0.99)).float().mean())
        if tau == 0.01:
            assert ((y.mean(0) - p).abs() < 4 * sigma).all()  # the mean of y tends to E[h] = p
    # measured: 0.043 (τ = 1), 0.84 (τ = 0.1), 0.983 (τ = 0.01); at τ = 1 the mean of y is 0.18 for p = 0.1
    assert near_binary[1.0] < 0.1 < 0.7 < near_binary[0.1] < near_binary[0.01] and near_binary[0.01] > 0.95
    hard = relaxed_bernoulli(logits[:5], 0.5, straight_through=True, generator=gen(0))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", ["binary", "spin"])
def test_seed_score_is_the_batch_size_and_its_gradient_is_rounding_noise(kind):
    stack = make_stack(kind)
    for batch, layer, v in ((6, 0, images()), (3, 1, torch.zeros(3, 784)), (5, 2, torch.ones(5, 784)),
                            (4, 0, 10 * images(4, seed=9))):
        x = v.flatten(1).clone().requires_grad_(True)
        score = seed_score(stack, x, layer, generator=gen())
        assert abs(float(score.detach()) - batch) < 16 * batch * torch.finfo(torch.float32).eps
        (grad,) = torch.autograd.grad(score, x)
        assert grad.abs().max() < 1e-6  # measured ≤ 8.3e-8; gradcam's (below) ~0.35
    x = images().flatten(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(gradcam_score(stack, x, 0, generator=gen()), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-3
    m = seed_map(stack, images(), 0, generator=gen())
    assert ((m - 0.5).abs() < 1e-2).all()  # σ(noise · A) ≈ ½ everywhere


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_gradcam_map_equals_gradient_times_input(layer):
    stack, v = make_stack(), images()
    x = v.flatten(1).clone().requires_grad_(True)
    score = gradcam_score(stack, x, layer, temperature=0.5, n_samples=2, generator=gen())
    (grad,) = torch.autograd.grad(score, x)
    cam = gradcam_map(stack, v, layer, temperature=0.5, n_samples=2, activation="none", generator=gen())
    assert cam.shape == (6, 1, 28, 28)
    assert torch.allclose(cam, (x * grad).reshape(6, 1, 28, 28).detach(), atol=1e-7)
    relu = gradcam_map(stack, v, layer, temperature=0.5, n_samples=2, generator=gen())
    assert torch.equal(relu, cam.clamp(min=0)) and (relu > 0).any()


@pytest.mark.parametrize("kind", ["binary", "spin"])
def test_one_layer_gradcam_matches_a_hand_computation(kind):
    stack, v = make_stack(kind, sizes=(784, 25)), images()
    tau, n_samples = 0.5, 3
    W, c = stack.layers[0].W.detach(), stack.layers[0].hidden_bias.detach()
    x = v.flatten(1)
    a = x @ W.t() + c
    eps = torch.finfo(torch.float32).eps
    u = torch.rand((n_samples, 6, 25), generator=gen()).clamp(eps, 1 - eps)  # the documented draw
    logits, factor = (a, 1.0) if kind == "binary" else (2 * a, 4.0)
    y = torch.sigmoid((logits + u.log() - torch.log1p(-u)) / tau)
    alpha = (factor * y * (1 - y) / tau).mean(0)  # (B, K): ∂s/∂a_k for each image
    by_hand = torch.zeros(6, 784)
    for k in range(25):  # channel k: activation map W_k ⊙ v, weight α_k
        by_hand += alpha[:, k: k + 1] * (W[k] * x)
    for activation, act in (("relu", torch.relu), ("abs", torch.abs), ("none", lambda t: t)):
        cam = gradcam_map(stack, v, 0, temperature=tau, n_samples=n_samples, activation=activation, generator=gen())
        assert torch.allclose(cam, act(by_hand).reshape(6, 1, 28, 28), atol=1e-6)


def test_deeper_layer_map_is_grad_cam_on_first_layer_channels():
    """Layer 2's map = relu(Σ_k α_k W⁰_k ⊙ v), α_k = ∂s/∂a⁰_k through a hand-written stack forward."""
    stack, v = make_stack(), images()
    x = v.flatten(1)
    r0, r1, r2 = stack.layers
    a0 = (x @ r0.W.t() + r0.hidden_bias).detach().requires_grad_(True)
    a2 = torch.sigmoid(torch.sigmoid(a0) @ r1.W.t() + r1.hidden_bias) @ r2.W.t() + r2.hidden_bias
    eps = torch.finfo(torch.float32).eps
    u = torch.rand((1, 6, 4), generator=gen()).clamp(eps, 1 - eps)
    score = torch.sigmoid((a2 + u.log() - torch.log1p(-u)) / 0.5).sum()
    (alpha,) = torch.autograd.grad(score, a0)
    by_hand = torch.relu(torch.einsum("bk,ki->bi", alpha, r0.W.detach()) * x).reshape(6, 1, 28, 28)
    assert torch.allclose(gradcam_map(stack, v, 2, temperature=0.5, generator=gen()), by_hand, atol=1e-7)


@pytest.mark.parametrize("method", ["gradcam", "seed"])
def test_maps_have_image_shape_are_reproducible_and_differentiable(method):
    stack, v = make_stack(), images()
    maps = rbm_attention_maps(stack, v, 1, method, create_graph=True, generator=gen())
    assert maps.shape == (6, 1, 28, 28) and maps.requires_grad
    maps.sum().backward()
    grads = [stack.layers[0].W.grad, stack.layers[0].hidden_bias.grad]  # the visible bias is not on the path
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if method == "gradcam":
        assert grads[0].abs().max() > 0
    again = rbm_attention_maps(stack, v, 1, method, generator=gen())
    assert not again.requires_grad and torch.equal(again, maps.detach())
    with torch.no_grad():  # an evaluation loop's context must not break the maps
        assert torch.equal(rbm_attention_maps(stack, v, 1, method, generator=gen()), again)


def test_straight_through_forward_is_hard_and_backward_is_relaxed():
    logits = torch.randn(4, 9, generator=gen(2)).requires_grad_(True)
    soft = relaxed_bernoulli(logits, 0.5, generator=gen())
    hard = relaxed_bernoulli(logits, 0.5, straight_through=True, generator=gen())
    assert torch.equal(hard.detach(), (soft > 0.5).float())
    (g_soft,) = torch.autograd.grad(soft.sum(), logits)
    (g_hard,) = torch.autograd.grad(hard.sum(), logits)
    assert torch.equal(g_soft, g_hard)
    cam = gradcam_map(make_stack(), images(), 0, straight_through=True, generator=gen())
    assert torch.isfinite(cam).all() and cam.abs().max() > 0


def test_bad_choices_raise_config_errors():
    stack, v = make_stack(sizes=(784, 10)), images()
    with pytest.raises(ConfigError, match="rbm_map"):
        rbm_attention_maps(stack, v, 0, "occlusion")
    with pytest.raises(ConfigError, match="square"):
        seed_map(stack, v, 0)
    with pytest.raises(ConfigError, match="activation"):
        gradcam_map(stack, v, 0, activation="softplus")
    with pytest.raises(ConfigError, match="temperature"):
        gradcam_map(stack, v, 0, temperature=0.0)
    with pytest.raises(ConfigError, match="image_size"):
        gradcam_map(stack, v, 0, image_size=(28, 27))
