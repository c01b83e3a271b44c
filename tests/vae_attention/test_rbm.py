"""RBM science against independent oracles.

Oracles: brute-force sums over every hidden (and visible) state of a 6-visible / 4-hidden RBM, with the energy
written out here by hand; scikit-learn's ``BernoulliRBM._free_energy``; the exact visible marginals (from
exp(−F)) for the Gibbs sampler's stationary law; the mean-image baseline for CD training on sklearn digits.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import BernoulliRBM

from vae_attention.errors import ConfigError
from vae_attention.models import RBM, StackedRBM
from vae_attention.models.rbm import REPORT_RBM_SIZES, cd_step

N_VIS, N_HID = 6, 4
KINDS = ("binary", "spin")


def tiny_rbm(kind: str, seed: int = 0, scale: float = 1.0) -> RBM:
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(N_VIS, N_HID, kind).double()
    with torch.no_grad():
        rbm.W.copy_(torch.randn(N_HID, N_VIS, generator=g, dtype=torch.float64) * scale)
        rbm.visible_bias.copy_(torch.randn(N_VIS, generator=g, dtype=torch.float64) * scale)
        rbm.hidden_bias.copy_(torch.randn(N_HID, generator=g, dtype=torch.float64) * scale)
    return rbm


def all_states(n: int, kind: str = "binary") -> torch.Tensor:
    s = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)
    return s if kind == "binary" else 2 * s - 1


def hand_energy(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v_p, h_q) = −Σ_i b_i v_pi − Σ_j c_j h_qj − Σ_ij h_qj W_ji v_pi for every pair: (len(v), len(h))."""
    W, b, c = rbm.W.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    return (-torch.einsum("i,pi->p", b, v)[:, None] - torch.einsum("j,qj->q", c, h)[None, :]
            - torch.einsum("qj,ji,pi->pq", h, W, v))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. On a loaded 2-CPU machine two threads made CD training 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def visible_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.cat([all_states(N_VIS), torch.rand(8, N_VIS, generator=g, dtype=torch.float64)])


@pytest.mark.parametrize("kind", KINDS)
def test_energy_and_free_energy_equal_brute_force(kind, visible_inputs):
    rbm = tiny_rbm(kind)
    h = all_states(N_HID, kind)
    energies = hand_energy(rbm, visible_inputs, h)
    rows = visible_inputs.repeat_interleave(len(h), 0)
    assert torch.allclose(rbm.energy(rows, h.repeat(len(visible_inputs), 1)).reshape(energies.shape), energies,
                          atol=1e-12)
    brute = -torch.logsumexp(-energies, dim=1)
    assert torch.allclose(rbm.free_energy(visible_inputs), brute, atol=1e-10)


def test_binary_free_energy_equals_sklearn(visible_inputs):
    rbm = tiny_rbm("binary", seed=3)
    sk = BernoulliRBM(n_components=N_HID)
    sk.components_ = rbm.W.detach().numpy().copy()
    sk.intercept_hidden_ = rbm.hidden_bias.detach().numpy().copy()
    sk.intercept_visible_ = rbm.visible_bias.detach().numpy().copy()
    expected = sk._free_energy(visible_inputs.numpy())
    np.testing.assert_allclose(rbm.free_energy(visible_inputs).detach().numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_conditionals_equal_brute_force_marginals(kind, visible_inputs):
    rbm = tiny_rbm(kind, seed=5)
    v_all, h_all = all_states(N_VIS), all_states(N_HID, kind)
    on = (h_all > 0).double()
    # p(h | v) over all h for each v: marginals P(h_j on | v) and E[h_j | v]
    w = torch.softmax(-hand_energy(rbm, visible_inputs, h_all), dim=1)
    assert torch.allclose(rbm.hidden_prob(visible_inputs), w @ on, atol=1e-12)
    assert torch.allclose(rbm.hidden_mean(visible_inputs), w @ h_all, atol=1e-12)
    # p(v | h) over all binary v for each h: P(v_i = 1 | h)
    w = torch.softmax(-hand_energy(rbm, v_all, h_all).t(), dim=1)
    assert torch.allclose(rbm.visible_prob(h_all), w @ v_all, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gibbs_chains_reach_the_exact_visible_law(kind):
    rbm = tiny_rbm(kind, seed=7, scale=0.7)
    v_all = all_states(N_VIS)
    exact = torch.softmax(-rbm.free_energy(v_all).detach(), dim=0)  # p(v) ∝ exp(−F(v))
    g = torch.Generator().manual_seed(0)
    n = 20000
    start = torch.bernoulli(torch.full((n, N_VIS), 0.5, dtype=torch.float64), generator=g)
    v = rbm.gibbs(start, k=30, generator=g)
    index = (v * 2 ** torch.arange(N_VIS - 1, -1, -1, dtype=torch.float64)).sum(1).long()
    empirical = torch.bincount(index, minlength=len(v_all)).double() / n
    marg_exact, marg_emp = exact @ v_all, v.mean(0)
    assert (marg_emp - marg_exact).abs().max() < 4 * 0.5 / n**0.5  # 4 sigma per unit
    assert 0.5 * (empirical - exact).abs().sum() < 0.035  # total variation; ~0.02 expected from sampling noise


def test_gibbs_is_reproducible_with_an_injected_generator():
    rbm = RBM(20, 10, generator=torch.Generator().manual_seed(0), init_std=0.5)
    v = torch.rand(16, 20, generator=torch.Generator().manual_seed(1))
    a = rbm.gibbs(v, k=3, generator=torch.Generator().manual_seed(42))
    b = rbm.gibbs(v, k=3, generator=torch.Generator().manual_seed(42))
    c = rbm.gibbs(v, k=3, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    h = RBM(20, 10, "spin", generator=torch.Generator().manual_seed(0)).sample_hidden(v, torch.Generator())
    assert set(h.unique().tolist()) <= {-1.0, 1.0}


@pytest.fixture(scope="module")
def digits():
    return torch.tensor(load_digits().data > 7, dtype=torch.float32)  # 1797 binarised 8 x 8 digits


@pytest.mark.parametrize("persistent, k", [(False, 1), (True, 1), (False, 3)])
def test_cd_training_lowers_reconstruction_error(digits, persistent, k):
    """Mean-image baseline MSE 0.132, untrained 0.249; after 8 epochs 0.068 (CD-1), 0.073 (PCD-1), 0.067 (CD-3)."""
    baseline = float((digits - digits.mean(0)).pow(2).mean())
    g = torch.Generator().manual_seed(0)
    stack = StackedRBM((64, 64), generator=g)
    opt = torch.optim.SGD(stack.parameters(), lr=0.1, momentum=0.5)
    before = float(stack.layers[0].reconstruction_error(digits))
    for _ in range(8):
        perm = torch.randperm(len(digits), generator=g)
        for i in range(0, len(digits), 32):
            metrics = cd_step(stack, 0, digits[perm[i: i + 32]], opt, k=k, persistent=persistent, generator=g)
    after = float(stack.layers[0].reconstruction_error(digits))
    assert set(metrics) == {"cd_loss", "recon_error", "free_energy_data", "free_energy_model"}
    assert before > baseline and after < 0.6 * baseline, (before, after, baseline)


def test_pcd_chains_round_trip_through_state_dict_and_resume_bit_identically():
    g = torch.Generator().manual_seed(0)
    rbm = RBM(12, 5, generator=g, init_std=0.3)
    opt = torch.optim.SGD(rbm.parameters(), lr=0.05)
    v = torch.bernoulli(torch.full((8, 12), 0.4), generator=g)
    for _ in range(3):
        opt.zero_grad()
        rbm.contrastive_divergence(v, 2, persistent=True, generator=g).loss.backward()
        opt.step()
    assert rbm.persistent_chains.shape == (8, 12)
    buf = io.BytesIO()
    torch.save({"rbm": rbm.state_dict(), "opt": opt.state_dict(), "gen": g.get_state()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = RBM(12, 5)
    assert fresh.persistent_chains.shape == (0, 12)
    fresh.load_state_dict(saved["rbm"])
    assert torch.equal(fresh.persistent_chains, rbm.persistent_chains)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.05)
    fresh_opt.load_state_dict(saved["opt"])
    g2 = torch.Generator()
    g2.set_state(saved["gen"])
    for model, optim, gen in ((rbm, opt, g), (fresh, fresh_opt, g2)):
        optim.zero_grad()
        model.contrastive_divergence(v, 2, persistent=True, generator=gen).loss.backward()
        optim.step()
    assert torch.equal(fresh.W, rbm.W) and torch.equal(fresh.persistent_chains, rbm.persistent_chains)
    rbm.reset_chains()
    assert rbm.persistent_chains.shape == (0, 12)


def test_stack_transform_and_cd_step_touch_only_their_layer():
    g = torch.Generator().manual_seed(0)
    stack = StackedRBM((784, 16, 9, 4), "spin", generator=g, init_std=0.1)
    assert [(r.n_visible, r.n_hidden) for r in stack.layers] == [(784, 16), (16, 9), (9, 4)]
    v = torch.rand(5, 1, 28, 28, generator=g)
    x = v.flatten(1)
    assert torch.equal(stack.transform(v, 0), x)
    for rbm in stack.layers[:2]:
        x = torch.sigmoid(2 * (x @ rbm.W.t() + rbm.hidden_bias))  # P(h = +1 | x) of a spin layer
    assert torch.allclose(stack.transform(v, 2), x, atol=1e-6)
    before = [p.detach().clone() for p in stack.parameters()]
    cd_step(stack, 1, v, torch.optim.SGD(stack.parameters(), lr=0.5), sample_input=True, generator=g)
    changed = [not torch.equal(a, b) for a, b in zip(before, stack.parameters(), strict=True)]
    assert changed == [False] * 3 + [True] * 3 + [False] * 3
    assert len(StackedRBM().layers) == len(REPORT_RBM_SIZES) - 1 and stack.square_side(1) == 3


def test_bad_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="hidden"):
        RBM(4, 3, "gaussian")
    with pytest.raises(ConfigError, match="layer 3"):
        StackedRBM((784, 16, 9, 4)).free_energy(torch.zeros(1, 784), 3)
    with pytest.raises(ConfigError, match="square"):
        StackedRBM((784, 10)).square_side(0)
    with pytest.raises(ConfigError, match="k must be"):
        RBM(4, 3).gibbs(torch.zeros(1, 4), k=0)
