"""The independent textbook step and the FLOP/GEMM instruments (benchmarks/textbook.py, benchmarks/flops.py).

Known answers for the FLOP counter, a hand-computed L_AD, per-dimension maps checked against a second route
(one batched ``autograd.grad`` with ``is_grads_batched``), and a ``--quick`` CLI smoke run. Small batches
keep the file to a few seconds on a shared 2-core machine.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from benchmarks import flops, textbook


@pytest.fixture(autouse=True)
def one_thread():
    """1 intra-op thread: on a 2-core machine shared with other jobs, 2 spinning OpenMP threads wait on
    descheduled peers and these small steps run several times slower (the figures are not under test)."""
    with flops.torch_threads(1):
        yield


def test_flop_counter_linear_forward_is_2_b_in_out():
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    assert flops.step_flops(lambda: layer(x)) == 2 * 4 * 32 * 16


def test_flop_counter_counts_backward_and_conv():
    # Linear backward = grad wrt input + grad wrt weight, each as large as the forward: 3× in all
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32, requires_grad=True)
    assert flops.step_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 32 * 16
    # conv: 2 · B · C_out · H_out · W_out · C_in · k²
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert flops.step_flops(lambda: conv(torch.randn(2, 3, 5, 5))) == 2 * 2 * 8 * 25 * 3 * 9


def test_ad_loss_equals_hand_computation():
    a1 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    a2 = torch.tensor([[0.5, 1.0], [1.0, 0.0]])
    # Σmin = 0.5 + 0 + 1 + 0 = 1.5; Σ(A1 + A2) = 3 + 2.5 = 5.5; L_AD = 2·1.5/5.5
    maps = torch.stack([a1, a2])[None]  # (B=1, n=2, 2, 2)
    assert textbook.ad_loss(maps, [(0, 1)]).item() == pytest.approx(3.0 / 5.5)
    # two pairs (0,1), (2,3): identical maps overlap 1, disjoint maps 0; the mean over pairs and images
    disjoint = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    four = torch.stack([a1, a1, *disjoint])[None]
    assert textbook.ad_loss(four, [(0, 1), (2, 3)]).item() == pytest.approx(0.5)
    # a pair of two all-zero maps (0/0) is left out of the mean, not counted as 0 or NaN
    assert textbook.ad_loss(torch.zeros(1, 2, 2, 2), [(0, 1)]).item() == 0.0
    silent = torch.stack([a1, a1, torch.zeros(2, 2), torch.zeros(2, 2)])[None]
    assert textbook.ad_loss(silent, [(0, 1), (2, 3)]).item() == pytest.approx(1.0)


def test_ad_loss_agrees_with_the_projects_l_ad_on_the_report_chain():
    # two implementations written apart (this one imports nothing of the project) on ReLU maps with zero maps
    from vae_attention.losses import attention_disentanglement

    gen = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(5, 10, 8, 8, generator=gen) - 0.5)
    maps[0, 3] = 0.0
    maps[1, 4:6] = 0.0  # a both-zero pair: dropped by both
    chain = textbook.TextbookStep("ad_factorvae", batch=4, images=16).dims_and_pairs()[1]
    torch.testing.assert_close(textbook.ad_loss(maps, chain), attention_disentanglement(maps, "consecutive_dims"))


def _maps_batched_route(mu: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """All dims at once: one vmapped backward with the z one-hot cotangents (z, B, z)."""
    z = mu.shape[1]
    cotangents = torch.eye(z).unsqueeze(1).expand(z, mu.shape[0], z)
    (grads,) = torch.autograd.grad(mu, acts, cotangents, is_grads_batched=True, create_graph=True)
    alpha = grads.mean(dim=(-2, -1), keepdim=True)  # (z, B, C, 1, 1)
    return torch.relu((alpha * acts).sum(dim=2)).transpose(0, 1)  # (B, z, H, W)


@pytest.mark.parametrize("layer", ["last", "first"])
def test_attention_maps_match_batched_gradient_route(layer):
    torch.manual_seed(0)
    encoder = textbook.Encoder(z_dim=4)
    x = (torch.rand(2, 1, 64, 64) < 0.3).float()
    mu, _, acts = encoder(x, keep=textbook.LAYERS[layer])
    loop = textbook.attention_maps(mu, acts, range(4))
    batched = torch.nn.functional.interpolate(_maps_batched_route(mu, acts), size=(64, 64), mode="bilinear")
    assert loop.shape == (2, 4, 64, 64)
    scale = batched.abs().max()
    assert scale > 0
    torch.testing.assert_close(loop, batched, rtol=1e-5, atol=1e-6 * scale.item())
    # second order: L_AD's gradient wrt the first conv's weights agrees between the two routes
    weight = encoder.convs[0].weight
    pairs = [(0, 1), (2, 3)]
    (g_loop,) = torch.autograd.grad(textbook.ad_loss(loop, pairs), weight, retain_graph=True)
    (g_batched,) = torch.autograd.grad(textbook.ad_loss(batched, pairs), weight)
    assert g_loop.abs().max() > 0
    torch.testing.assert_close(g_loop, g_batched, rtol=1e-4, atol=1e-5 * g_loop.abs().max().item())


def test_random_pair_computes_two_maps_of_distinct_dims():
    step = textbook.TextbookStep("ad_factorvae", batch=4, pairs="random", images=16)
    dims, pairs = step.dims_and_pairs()
    assert len(set(dims)) == 2 and all(0 <= d < textbook.Z_DIM for d in dims) and pairs == [(0, 1)]
    dims, pairs = textbook.TextbookStep("ad_factorvae", batch=4, images=16).dims_and_pairs()
    assert dims == list(range(10)) and pairs == [(i, i + 1) for i in range(9)]  # the report's chain


@pytest.mark.parametrize("model", ["factorvae", "ad_factorvae"])
def test_textbook_step_updates_both_networks(model):
    step = textbook.TextbookStep(model, batch=8, images=32)
    before = [p.detach().clone() for p in (step.encoder.convs[0].weight, step.disc[0].weight)]
    out = step()
    assert all(math.isfinite(v.item()) for v in out.values())
    assert ("ad" in out) == (model == "ad_factorvae")
    assert 0.0 <= out.get("ad", torch.tensor(0.0)).item() <= 1.0
    assert out["d_loss"].item() == pytest.approx(math.log(2), abs=0.05)  # an untrained D guesses
    after = (step.encoder.convs[0].weight, step.disc[0].weight)
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_iterations_per_s_and_fraction_of_gemm_api():
    assert textbook.textbook_iterations_per_s("factorvae", steps=1, threads=1, batch=4) > 0
    weight = torch.randn(64, 64)
    result = flops.fraction_of_gemm(lambda: weight @ weight, steps=3, threads=1, warmup=1, gemm_size=128,
                                    gemm_seconds=0.05)
    assert result["gflop_per_step"] == pytest.approx(2 * 64**3 / 1e9)
    assert result["gflops"] == pytest.approx(result["iterations_per_s"] * result["gflop_per_step"])
    assert result["fraction"] == pytest.approx(result["gflops"] / result["gemm_gflops"])
    assert torch.get_num_threads() >= 1


def test_quick_cli_prints_figures(capsys):
    textbook.main(["--model", "ad_factorvae", "--quick", "--batch", "8", "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"fp32 GEMM 512³ on 1 threads: [\d.]+ GFLOP/s", out)
    row = next(line for line in out.splitlines() if line.startswith("ad_factorvae consecutive"))
    it_s, gflop_step, gflops, percent = re.findall(r"[\d.]+", row.split(")")[-1])
    assert float(it_s) > 0 and float(gflop_step) > 0 and float(gflops) > 0 and float(percent) > 0
