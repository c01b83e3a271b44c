"""Known-answer tests of the disentanglement protocol settings (issue 10): the report's all-conv architecture,
``encoder_fc_relu``, the report's deferred loop order, and its detached Σμ-of-consecutive-images L_AD.

Oracles: parameter counts and shapes worked out from 1Konny's ``FactorVAE1`` layer list; hand-written forward
passes; gradients recomputed on copies with ``torch.autograd.grad`` and a fresh Adam; the closed form of the
report's L_AD at the last conv (a 1×1 map whose value is √2·|Σ_i μ_i| after batch-RMS normalisation, so
L_AD = mean over consecutive images of 2·min(s_b, s_b+1)/(s_b + s_b+1), s_b = |Σ_i μ_b,i|).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vae_attention import ConfigError, losses
from vae_attention.attention import check_layer
from vae_attention.data import DSprites
from vae_attention.models import DSpritesVAE, reparameterize
from vae_attention.models.dsprites import AllConvDSpritesVAE
from vae_attention.training import DisentangleConfig, DisentangleState, build_models, build_optimizers, train_step
from vae_attention.training.disentangle import check_model

# A small discriminator and batch keep these tests fast; the update logic does not depend on their size.
SMALL = dict(d_hidden_units=32, d_hidden_layers=5, batch_size=8, eval_size=16)
# The report's code (FACT-2021 disentanglement/, at the Table 1 commits), as a DisentangleConfig.
SEED = dict(architecture="konny", loop_order="deferred", ad_gradient="detached", ad_score="sum",
            pairs="consecutive_images", ad_activation="abs", normalize_grads="batch", attention_layer="encoder.10")


@pytest.fixture(scope="module")
def small_dsprites(tmp_path_factory):
    return DSprites(grid=(3, 2, 4, 8, 8), cache_dir=tmp_path_factory.mktemp("dsprites_cache"))


def _batches(steps, seed=0, n=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def draw():
        return (torch.rand(n, 1, 64, 64, generator=g) > 0.8).to(dtype)

    return [(draw(), draw()) for _ in range(steps)]


def _train(config, batches, seed=7, dtype=torch.float32):
    models = build_models(config)
    for model in models:
        if model is not None:
            model.to(dtype)
    optimizers = build_optimizers(config, models)
    g = torch.Generator().manual_seed(seed)
    metrics = [train_step(models, optimizers, x, x2, config, g) for x, x2 in batches]
    return models, metrics


def _encoder(vae):
    return {k: v for k, v in vae.state_dict().items() if k.startswith("encoder.")}


# -- architecture -----------------------------------------------------------------------------------------------

def test_all_conv_vae_has_1konny_factorvae1_shapes_and_parameter_count():
    vae = AllConvDSpritesVAE(10, generator=torch.Generator().manual_seed(0))
    # conv(c_in, c_out, k): c_out·c_in·k² weights + c_out biases, FactorVAE1's layer list
    encoder = [(1, 32, 4), (32, 32, 4), (32, 64, 4), (64, 64, 4), (64, 128, 4), (128, 20, 1)]
    decoder = [(10, 128, 1), (128, 64, 4), (64, 64, 4), (64, 32, 4), (32, 32, 4), (32, 1, 4)]
    count = sum(o * i * k * k + o for i, o, k in encoder + decoder)
    assert count == 497_045
    assert sum(p.numel() for p in vae.parameters()) == count

    x = torch.rand(3, 1, 64, 64)
    expected = {"encoder.0": (3, 32, 32, 32), "encoder.2": (3, 32, 16, 16), "encoder.4": (3, 64, 8, 8),
                "encoder.6": (3, 64, 4, 4), "encoder.8": (3, 128, 1, 1), "encoder.10": (3, 20, 1, 1)}
    for layer, shape in expected.items():
        assert check_layer(vae, layer, x) == shape
    out = vae(x, generator=torch.Generator().manual_seed(1))
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 10)
    assert out.recon_logits.shape == (3, 1, 64, 64)
    # μ, log σ² are the first and last z channels of the last conv
    stats = vae.encoder(x)[:, :, 0, 0]
    assert torch.equal(out.mu, stats[:, :10]) and torch.equal(out.logvar, stats[:, 10:])


def test_all_conv_vae_initialises_like_1konny_normal_init():
    vae = AllConvDSpritesVAE(10, generator=torch.Generator().manual_seed(0))
    again = AllConvDSpritesVAE(10, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values(), strict=True))
    convs = [m for m in vae.modules() if type(m) is nn.Conv2d]
    transposed = [m for m in vae.modules() if type(m) is nn.ConvTranspose2d]
    assert len(convs) == 7 and len(transposed) == 5
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(weights.std()) - 0.02) < 0.001 and all(not m.bias.any() for m in convs)
    for m in transposed:  # PyTorch's default: U(±1/√fan_in), fan_in = out_channels·k² for a transposed conv
        bound = 1 / (m.weight.shape[1] * m.weight[0, 0].numel()) ** 0.5
        assert float(m.weight.detach().abs().max()) <= bound and m.bias.abs().max() > 0


@pytest.mark.parametrize("cls, index", [(DSpritesVAE, 10), (AllConvDSpritesVAE, 9)])
def test_encoder_fc_relu_false_removes_exactly_that_relu(cls, index):
    with_relu = cls(10, generator=torch.Generator().manual_seed(0))
    without = cls(10, generator=torch.Generator().manual_seed(0), encoder_fc_relu=False)
    kinds = [type(m) for m in with_relu.encoder], [type(m) for m in without.encoder]
    assert [i for i, (a, b) in enumerate(zip(*kinds, strict=True)) if a is not b] == [index]
    assert kinds[0][index] is nn.ReLU and kinds[1][index] is nn.Identity
    assert [type(m) for m in with_relu.decoder] == [type(m) for m in without.decoder]
    for a, b in zip(with_relu.state_dict().items(), without.state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1])  # same names, same weights from the same seed

    # Hand-written forward from the 128-unit layer's input: the last layer sees relu(h) or h itself.
    x = torch.rand(4, 1, 64, 64)
    features = with_relu.encoder[: index - 1](x).flatten(1)
    fc, head = with_relu.encoder[index - 1], with_relu.encoder[index + 1]
    h = features @ fc.weight.flatten(1).t() + fc.bias
    w, b = head.weight.flatten(1).t(), head.bias
    stats = {True: torch.relu(h) @ w + b, False: h @ w + b}
    assert (h < 0).any()  # the ReLU matters for this input
    for relu, model in ((True, with_relu), (False, without)):
        mu, logvar = model.encode(x)
        torch.testing.assert_close(torch.cat([mu, logvar], 1), stats[relu], rtol=1e-5, atol=1e-6)


def test_configs_name_the_architecture_and_check_its_layers():
    models = build_models(DisentangleConfig(architecture="konny", encoder_fc_relu=False, **SMALL))
    assert isinstance(models.vae, AllConvDSpritesVAE) and isinstance(models.vae.encoder[9], nn.Identity)
    assert isinstance(build_models(DisentangleConfig(**SMALL)).vae.encoder[10], nn.ReLU)  # today's default
    # the seed's discriminator: 5 hidden layers (Linear(z,1000) + 4 × Linear(1000,1000)) and a 2-logit head
    disc = build_models(DisentangleConfig(d_hidden_layers=5, d_hidden_units=1000)).discriminator
    assert [tuple(m.weight.shape) for m in disc.modules() if isinstance(m, nn.Linear)] == \
        [(1000, 10)] + [(1000, 1000)] * 4 + [(2, 1000)]
    check_model(DisentangleConfig(architecture="konny", attention_layer="encoder.10"))
    with pytest.raises(ConfigError):
        check_model(DisentangleConfig(architecture="konny", attention_layer="encoder.11"))
    for bad in [{"architecture": "resnet"}, {"loop_order": "later"}, {"ad_gradient": "none"},
                {"ad_score": "sum"}, {"ad_score": "sum", "pairs": "all_pairs"}]:
        with pytest.raises(ConfigError):
            DisentangleConfig.from_dict(bad)


# -- the report's AD-FactorVAE: a no-op L_AD ----------------------------------------------------------------------

def test_seed_ad_factorvae_trains_exactly_as_factorvae():
    batches = _batches(3)
    factorvae, _ = _train(DisentangleConfig(model="factorvae", **SEED, **SMALL), batches)
    ad, metrics = _train(DisentangleConfig(model="ad_factorvae", lambda_ad=5.0, **SEED, **SMALL), batches)
    for a, b in zip(_encoder(factorvae.vae).values(), _encoder(ad.vae).values(), strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(factorvae.vae.parameters(), ad.vae.parameters(), strict=True))
    assert all(0.0 < m["ad_loss"] <= 1.0 for m in metrics)  # a real L_AD value, only without a gradient
    assert {"dropped_pair_fraction", "zero_score_pair_fraction"} <= set(metrics[0])

    differentiable, _ = _train(
        DisentangleConfig(model="ad_factorvae", lambda_ad=5.0, **{**SEED, "ad_gradient": "differentiable"}, **SMALL),
        batches)
    assert any(not torch.equal(a, b) for a, b in
               zip(_encoder(factorvae.vae).values(), _encoder(differentiable.vae).values(), strict=True))


@pytest.mark.parametrize("ad_gradient", ["detached", "differentiable"])
def test_seed_l_ad_matches_its_closed_form_and_reaches_the_encoder_only_when_differentiable(ad_gradient):
    # float64, so the difference of two gradients (~10³ from the recon term) keeps L_AD's share exact
    lam, f64 = 5.0, torch.float64
    x, x2 = _batches(1, dtype=f64)[0]
    factorvae, _ = _train(DisentangleConfig(model="factorvae", **SEED, **SMALL), [(x, x2)], dtype=f64)
    config = DisentangleConfig(model="ad_factorvae", lambda_ad=lam, **{**SEED, "ad_gradient": ad_gradient}, **SMALL)
    initial = build_models(config).vae.to(f64)
    ad, metrics = _train(config, [(x, x2)], dtype=f64)  # deferred: this iteration's gradients are still in .grad

    mu, _ = initial.encode(x)  # closed form at encoder.10: maps ∝ |Σμ|, the √2 of the RMS cancels in L_AD
    s = mu.sum(dim=1).abs()
    l_ad = (2 * torch.minimum(s[:-1], s[1:]) / (s[:-1] + s[1:])).mean()
    assert metrics[0]["ad_loss"] == pytest.approx(float(l_ad.detach()), rel=1e-9)

    expected = dict(zip([n for n, _ in initial.named_parameters()],
                        torch.autograd.grad(lam * l_ad, list(initial.parameters()), allow_unused=True), strict=True))
    for (name, p_ad), p_fv in zip(ad.vae.named_parameters(), factorvae.vae.parameters(), strict=True):
        difference = p_ad.grad - p_fv.grad
        if ad_gradient == "detached":
            assert torch.equal(difference, torch.zeros_like(difference)), name
        elif name.startswith("encoder."):
            torch.testing.assert_close(difference, expected[name], rtol=1e-7, atol=1e-10)
        else:
            assert expected[name] is None and not difference.any(), name
    if ad_gradient == "differentiable":
        assert any(expected[n].abs().max() > 0 for n in expected if n.startswith("encoder."))


# -- the report's loop order ----------------------------------------------------------------------------------------

def test_deferred_order_applies_each_iteration_at_the_next_and_lets_d_loss_reach_the_encoder():
    config = DisentangleConfig(model="factorvae", gamma=10.0, architecture="konny", loop_order="deferred", **SMALL)
    models = build_models(config)
    optimizers = build_optimizers(config, models)
    start = copy.deepcopy(models)
    (x, x2), (y, y2) = _batches(2)
    g = torch.Generator().manual_seed(3)

    # Oracle for iteration 1 on copies with the same generator: the VAE gradient is that of the VAE loss plus
    # the discriminator loss through the un-detached D(z); the discriminator's is that of its loss.
    g_ref = torch.Generator().manual_seed(3)
    vae, disc = copy.deepcopy(start)
    out = vae(x, generator=g_ref)
    d_joint = disc(out.z)
    vae_loss = (losses.bernoulli_recon_loss(out.recon_logits, x) + losses.gaussian_kl(out.mu, out.logvar)
                + config.gamma * losses.discriminator_tc(d_joint))
    with torch.no_grad():
        mu2, logvar2 = vae.encode(x2)
        z_perm = losses.permute_dims(reparameterize(mu2, logvar2, g_ref), g_ref)
    d_loss = losses.discriminator_loss(d_joint, disc(z_perm))
    vae_params, d_params = list(vae.parameters()), list(disc.parameters())
    from_vae_loss = torch.autograd.grad(vae_loss, vae_params, retain_graph=True)
    from_d_loss = torch.autograd.grad(d_loss, vae_params, retain_graph=True, allow_unused=True)
    d_grads = torch.autograd.grad(d_loss, d_params)
    names = [n for n, _ in vae.named_parameters()]
    for name, grad in zip(names, from_d_loss, strict=True):  # D's loss reaches the encoder, not the decoder
        assert (grad is not None and grad.abs().max() > 0) == name.startswith("encoder."), name
    vae_grads = [a if b is None else a + b for a, b in zip(from_vae_loss, from_d_loss, strict=True)]

    train_step(models, optimizers, x, x2, config, g)
    for now, before in zip(models, start, strict=True):  # iteration 1 changes no weight
        assert all(torch.equal(a, b) for a, b in zip(now.parameters(), before.parameters(), strict=True))
    for p, want in zip(models.vae.parameters(), vae_grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
    for p, want in zip(models.discriminator.parameters(), d_grads, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)

    # Iteration 2 applies iteration 1's gradients first: one Adam step from the start with the oracle's gradients.
    for params, grads, lr, betas in ((vae_params, vae_grads, config.lr, config.betas),
                                     (d_params, d_grads, config.d_lr, config.d_betas)):
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        torch.optim.Adam(params, lr=lr, betas=betas).step()
    train_step(models, optimizers, y, y2, config, g)
    for now, want in ((models.vae, vae), (models.discriminator, disc)):
        for a, b in zip(now.parameters(), want.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(models.vae.parameters(), start.vae.parameters(), strict=True))


@pytest.mark.parametrize("setting", [
    {"architecture": "konny"},
    {"encoder_fc_relu": False},
    {"loop_order": "deferred"},
    {"ad_gradient": "detached"},
    {"ad_score": "sum", "pairs": "consecutive_images"},
    SEED,
])
def test_each_setting_trains_in_process(setting, small_dsprites):
    # random_pair: two per-dimension maps per step instead of ten keeps this cheap
    config = DisentangleConfig(model="ad_factorvae", **{"pairs": "random_pair", **setting}, **SMALL)
    state = DisentangleState(config, small_dsprites)
    metrics = [state.step() for _ in range(2)]
    for m in metrics:
        assert 0.0 <= m["ad_loss"] <= 1.0 and 0.0 <= m["dropped_pair_fraction"] <= 1.0
        assert all(v == v for v in m.values())  # no NaN


@pytest.mark.parametrize("model", ["ad_factorvae", "betavae"])
def test_deferred_resume_is_bit_identical(model, small_dsprites, tmp_path):
    config = DisentangleConfig(model=model, seed=3, **{**SEED, "ad_gradient": "differentiable"}, **SMALL)
    straight = DisentangleState(config, small_dsprites, device="cpu")
    straight_metrics = [straight.step() for _ in range(4)]

    first = DisentangleState(config, small_dsprites, device="cpu")
    resumed_metrics = [first.step() for _ in range(2)]
    first.save(tmp_path / "state.pt")
    del first
    second = DisentangleState(config, small_dsprites, device="cpu")
    second.load(tmp_path / "state.pt")
    resumed_metrics += [second.step() for _ in range(2)]

    assert resumed_metrics == straight_metrics
    def tensors(d):
        return [t for v in d.values() for t in (v.values() if isinstance(v, dict) else [v])]

    for key in ("vae", "discriminator", "pending_grads"):
        a, b = straight.state_dict()[key], second.state_dict()[key]
        assert (a is None) == (b is None), key
        assert a is None or all(torch.equal(u, v) for u, v in zip(tensors(a), tensors(b), strict=True)), key
    assert len(tensors(second.state_dict()["pending_grads"])) == len(list(second.models.vae.parameters())) + (
        0 if second.models.discriminator is None else len(list(second.models.discriminator.parameters())))
