"""The explicit FactorVAE two-optimiser step and DisentangleState: no gradient leaks, exact resume, learning."""

import copy

import pytest
import torch

from vae_attention import ConfigError, losses
from vae_attention.data import DSprites
from vae_attention.models import reparameterize
from vae_attention.training import DisentangleConfig, DisentangleState, build_models, build_optimizers, train_step

# A small discriminator keeps these tests fast; the update logic does not depend on its width.
SMALL = dict(d_hidden_units=64, d_hidden_layers=2, batch_size=16, eval_size=64)


@pytest.fixture(scope="module")
def small_dsprites(tmp_path_factory):
    return DSprites(grid=(3, 2, 4, 8, 8), cache_dir=tmp_path_factory.mktemp("dsprites_cache"))


def _batches(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) > 0.8).float(), (torch.rand(n, 1, 64, 64, generator=g) > 0.8).float()


@pytest.mark.parametrize("model", ["factorvae", "ad_factorvae"])
def test_discriminator_step_leaks_no_gradient_into_the_vae(model):
    config = DisentangleConfig(model=model, gamma=10.0, lambda_ad=5.0, **SMALL)
    models = build_models(config)
    optimizers = build_optimizers(config, models)
    x, x2 = _batches()

    # Oracle: the VAE gradient of the VAE objective alone, on copies with the same generator state.
    ref_vae, ref_disc = copy.deepcopy(models.vae), copy.deepcopy(models.discriminator)
    g_ref = torch.Generator().manual_seed(7)
    out = ref_vae(x, generator=g_ref)
    vae_loss = (losses.bernoulli_recon_loss(out.recon_logits, x) + losses.gaussian_kl(out.mu, out.logvar)
                + config.gamma * losses.discriminator_tc(ref_disc(out.z)))
    if model == "ad_factorvae":
        from vae_attention.training.disentangle import ad_attention_maps

        maps = ad_attention_maps(ref_vae, x, config, g_ref)
        vae_loss = vae_loss + config.lambda_ad * losses.attention_disentanglement(maps, config.pairs)
    expected_vae = torch.autograd.grad(vae_loss, list(ref_vae.parameters()))
    with torch.no_grad():
        mu2, logvar2 = ref_vae.encode(x2)
        z_perm = losses.permute_dims(reparameterize(mu2, logvar2, g_ref), g_ref)
    d_loss = losses.discriminator_loss(ref_disc(out.z.detach()), ref_disc(z_perm))
    expected_d = torch.autograd.grad(d_loss, list(ref_disc.parameters()))

    seen = {}

    def spy(name, opt, params):
        original = opt.step

        def step(*args, **kwargs):
            seen[name] = [p.grad.clone() for p in params]
            return original(*args, **kwargs)

        opt.step = step

    spy("vae", optimizers.vae, list(models.vae.parameters()))
    spy("d", optimizers.discriminator, list(models.discriminator.parameters()))
    before = [p.detach().clone() for p in models.vae.parameters()]
    train_step(models, optimizers, x, x2, config, torch.Generator().manual_seed(7))

    # atol 1e-6: the oracle's L_AD re-encodes x while train_step takes the maps from its own forward, the same
    # function summed in another order (float32 rounding ~1e-7 on gradients of ~1e-3)
    for got, want in zip(seen["vae"], expected_vae, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(seen["d"], expected_d, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(b, p) for b, p in zip(before, models.vae.parameters(), strict=True))


@pytest.mark.parametrize("model", ["factorvae", "ad_factorvae", "betavae"])
def test_repeated_steps_run_without_in_place_errors(model):
    config = DisentangleConfig(model=model, **SMALL)
    models = build_models(config)
    optimizers = build_optimizers(config, models)
    g = torch.Generator().manual_seed(0)
    with torch.autograd.set_detect_anomaly(True):
        for seed in range(3):
            metrics = train_step(models, optimizers, *_batches(seed), config, g)
    expected = {"recon_loss", "kld", "vae_loss"}
    if model != "betavae":
        expected |= {"tc", "d_loss", "d_accuracy"}
    if model == "ad_factorvae":
        expected |= {"ad_loss", "zero_map_fraction", "dropped_pair_fraction", "zero_score_pair_fraction"}
    assert set(metrics) == expected
    assert all(isinstance(v, float) and v == v for v in metrics.values())


@pytest.mark.parametrize("pairs", ["consecutive_dims", "random_pair", "top2", "consecutive_images"])
def test_every_pair_policy_trains(pairs, small_dsprites):
    state = DisentangleState(DisentangleConfig(model="ad_factorvae", pairs=pairs, lambda_ad=10.0, **SMALL),
                             small_dsprites)
    metrics = [state.step() for _ in range(2)]
    assert all(0.0 <= m["ad_loss"] <= 1.0 for m in metrics)


@pytest.mark.parametrize("model", ["ad_factorvae", "betavae"])
def test_resume_is_bit_identical(model, small_dsprites, tmp_path):
    config = DisentangleConfig(model=model, pairs="random_pair", seed=3, **SMALL)
    straight = DisentangleState(config, small_dsprites, device="cpu")
    straight_metrics = [straight.step() for _ in range(20)]

    first = DisentangleState(config, small_dsprites, device="cpu")
    resumed_metrics = [first.step() for _ in range(10)]
    first.save(tmp_path / "state.pt")
    del first
    second = DisentangleState(config, small_dsprites, device="cpu")
    second.load(tmp_path / "state.pt")
    assert second.iteration == 10
    resumed_metrics += [second.step() for _ in range(10)]

    assert resumed_metrics == straight_metrics
    for a, b in zip(straight.state_dict()["vae"].values(), second.state_dict()["vae"].values(), strict=True):
        assert torch.equal(a, b)
    assert straight.pop_window() == second.pop_window()


def test_factorvae_learns_on_small_generated_dsprites(small_dsprites):
    state = DisentangleState(DisentangleConfig(model="factorvae", gamma=10.0, **{**SMALL, "batch_size": 64}),
                       small_dsprites)
    recon = [state.step()["recon_loss"] for _ in range(200)]
    early, late = sum(recon[:20]) / 20, sum(recon[-20:]) / 20
    # from ~2839 nats (logits 0: 4096·ln 2) to ~1050 after 200 iterations at lr 1e-4 (~970 after 300)
    assert late < 0.5 * early, (early, late)
    assert state.eval_recon_loss() < 0.5 * early
    mu, logvar = state.representation(small_dsprites.images([0, 1, 2]))
    assert mu.shape == logvar.shape == (3, 10)


def test_eval_subset_is_held_out_of_training(small_dsprites):
    state = DisentangleState(DisentangleConfig(**SMALL), small_dsprites)
    assert len(state.eval_indices) == 64
    assert not set(state.eval_indices.tolist()) & set(state.train_indices.tolist())
    assert len(state.eval_indices) + len(state.train_indices) == small_dsprites.num_images


def test_config_rejects_unknown_keys_and_bad_values():
    assert DisentangleConfig.from_dict({"gamma": "20", "betas": "0.5,0.9", "model": "ad_factorvae"}).gamma == 20.0
    with pytest.raises(ConfigError, match="unknown DisentangleConfig key"):
        DisentangleConfig.from_dict({"gama": 20})
    for bad in [{"gamma": 0}, {"gamma": -1}, {"model": "vae"}, {"pairs": "all"}, {"batch_size": 1}, {"lr": "fast"}]:
        with pytest.raises(ConfigError):
            DisentangleConfig.from_dict(bad)


HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__")


@pytest.mark.parametrize("model", ["factorvae", "ad_factorvae"])
def test_tensor_step_reads_nothing_back_and_the_window_sums_on_the_device(model, small_dsprites, monkeypatch):
    # Oracle for "no host sync": every Tensor method that copies a value to Python raises inside the step (fused
    # Adam: the default foreach Adam reads its step counters with .item(); those live on the host anyway).
    config = DisentangleConfig(model=model, **SMALL)
    state = DisentangleState(config, small_dsprites)
    state.optimizers = build_optimizers(config, state.models, fused=True)
    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, lambda *_: pytest.fail("the step read a tensor back to the host"))
        steps = [state.step() for _ in range(2)]
    assert all(torch.is_tensor(v) and v.dim() == 0 for m in steps for v in m.values())
    # the window's float64 device sums give exactly the Python float mean of the per-step values
    want = {key: (float(steps[0][key]) + float(steps[1][key])) / 2 for key in steps[0]}
    assert state.pop_window() == want


@pytest.mark.parametrize("model", ["factorvae", "betavae", "ad_factorvae"])
def test_compiled_step_gives_the_eager_losses(model):
    from vae_attention.training.disentangle.step import compile_models

    config = DisentangleConfig(model=model, **SMALL)
    eager, compiled = build_models(config), build_models(config)
    # aot_eager: dynamo + AOTAutograd's forward/backward graphs, without inductor's code generation (tens of s)
    names = compile_models(compiled, config.replace(compile="default"), backend="aot_eager")
    assert names == {"factorvae": ["vae.decoder", "vae.encoder", "discriminator"],
                     "betavae": ["vae.decoder", "vae.encoder"],
                     "ad_factorvae": ["vae.decoder", "discriminator"]}[model]
    runs = []
    for models in (eager, compiled):
        optimizers, g = build_optimizers(config, models), torch.Generator().manual_seed(0)
        runs.append([train_step(models, optimizers, *_batches(seed), config, g) for seed in range(2)])
    # stated tolerance: rel 1e-5 (the compiled graphs may reorder float32 sums); aot_eager measured exact here
    for got, want in zip(runs[1], runs[0], strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert list(compiled.vae.state_dict()) == list(eager.vae.state_dict())  # checkpoints keep their keys
