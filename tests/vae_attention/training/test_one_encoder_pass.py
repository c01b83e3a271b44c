"""The AD step takes its attention maps from its own forward pass: same losses and weights as the old two-pass route.

Oracle: the previous implementation, written out below (``old_train_step``): the VAE forward, then a second
``encode`` of the same batch inside ``attention_maps`` for L_AD (and a third for ``top2``'s ranking). Both
graphs compute the same function of the same weights, so the losses and the gradients (hence Adam's updates)
agree up to the order of floating-point sums. Tolerances: losses rtol 1e-6 or atol 1e-6 nats (the KL of a
fresh model is ~1e-7 nats, a difference of O(1) float32 terms); weights after two Adam steps atol 1e-8
(lr = 1e-4, so 0.01 % of one step).
"""

from __future__ import annotations

import pytest
import torch

from vae_attention import ConfigError, losses
from vae_attention.attention import attention_maps, capture_activation
from vae_attention.models import reparameterize
from vae_attention.training import DisentangleConfig, build_models, build_optimizers, train_step

SMALL = dict(d_hidden_units=64, d_hidden_layers=2, batch_size=4, eval_size=8, lambda_ad=5.0)


def old_ad_maps(vae, x, config, generator):
    """The previous ``ad_attention_maps``: every call encodes ``x`` again."""
    kwargs = dict(activation=config.ad_activation, normalize_grads=config.normalize_grads,
                  grad_method=config.grad_method)
    layer = config.attention_layer
    if config.pairs == "consecutive_images":
        return attention_maps(vae, x, layer, score="sum", create_graph=True, **kwargs)
    if config.pairs == "top2":
        dims = losses.top2_dims(attention_maps(vae, x, layer, score="per_dim", create_graph=False, **kwargs))
    else:
        dims = losses.select_pair_dims(config.pairs, config.z_dim, generator)
    return attention_maps(vae, x, layer, score="per_dim", dims=dims, create_graph=True, **kwargs)


def old_train_step(models, optimizers, batch, batch2, config, generator):
    """The previous AD-FactorVAE ``train_step`` (VAE update, then the discriminator's), maps from a re-encode."""
    vae, disc = models
    vae.train()
    out = vae(batch, generator=generator)
    recon = losses.bernoulli_recon_loss(out.recon_logits, batch)
    kld = losses.gaussian_kl(out.mu, out.logvar)
    tc = losses.discriminator_tc(disc(out.z))
    maps = old_ad_maps(vae, batch, config, generator)
    ad = losses.attention_disentanglement(maps, config.pairs, generator)
    vae_loss = recon + kld + config.gamma * tc + config.lambda_ad * ad
    optimizers.vae.zero_grad(set_to_none=True)
    torch.autograd.backward(vae_loss, inputs=list(vae.parameters()))
    with torch.no_grad():
        mu2, logvar2 = vae.encode(batch2)
        z_perm = losses.permute_dims(reparameterize(mu2, logvar2, generator), generator)
    d_joint = disc(out.z.detach())
    d_perm = disc(z_perm)
    d_loss = losses.discriminator_loss(d_joint, d_perm)
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers.vae.step()
    optimizers.discriminator.step()
    values = {"recon_loss": recon, "kld": kld, "tc": tc, "ad_loss": ad, "vae_loss": vae_loss, "d_loss": d_loss}
    return {key: float(value.detach()) for key, value in values.items()}


def _batches(step, n=4):
    g = torch.Generator().manual_seed(100 + step)
    return tuple((torch.rand(n, 1, 64, 64, generator=g) > 0.7).float() for _ in range(2))


def _run(step_fn, config, steps=2):
    models = build_models(config)
    optimizers = build_optimizers(config, models)
    generator = torch.Generator().manual_seed(3)
    history = [step_fn(models, optimizers, *_batches(i), config, generator) for i in range(steps)]
    return history, models


@pytest.mark.parametrize("pairs", ["consecutive_dims", "top2", "consecutive_images"])
def test_one_pass_step_equals_the_two_pass_route(pairs):
    config = DisentangleConfig(model="ad_factorvae", pairs=pairs, grad_method="loop", **SMALL)
    expected, old_models = _run(old_train_step, config)
    got, new_models = _run(train_step, config)
    for old, new in zip(expected, got, strict=True):
        for key, value in old.items():
            assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert expected[-1]["ad_loss"] > 0  # L_AD took part
    for module in ("vae", "discriminator"):
        old_state = getattr(old_models, module).state_dict()
        new_state = getattr(new_models, module).state_dict()
        for name, tensor in old_state.items():
            torch.testing.assert_close(new_state[name], tensor, rtol=0, atol=1e-8, msg=f"{module}.{name}")


@pytest.mark.parametrize("pairs, passes_before", [("consecutive_dims", 3), ("top2", 4)])
def test_ad_step_runs_the_encoder_once_per_batch(pairs, passes_before):
    config = DisentangleConfig(model="ad_factorvae", pairs=pairs, **SMALL)
    counts = {}
    for name, step_fn in (("old", old_train_step), ("new", train_step)):
        models = build_models(config)
        calls = []
        models.vae.encoder.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        step_fn(models, build_optimizers(config, models), *_batches(0), config, torch.Generator().manual_seed(0))
        counts[name] = len(calls)
    # one pass for the VAE batch, one for the discriminator's batch
    assert counts == {"old": passes_before, "new": 2}


def test_capture_activation_needs_exactly_one_4d_output():
    config = DisentangleConfig(model="ad_factorvae", **SMALL)
    vae = build_models(config).vae
    x = _batches(0)[0]
    with capture_activation(vae, "encoder.0") as captured:
        vae.encode(x)
        vae.encode(x)
    with pytest.raises(ConfigError, match="ran 2 times"):
        _ = captured.tensor
    with capture_activation(vae, "encoder.9") as captured:  # the first Linear: (B, 128)
        vae.encode(x)
    with pytest.raises(ConfigError, match=r"need \(B, K, h, w\)"):
        _ = captured.tensor
    with capture_activation(vae, "encoder.0", enabled=False) as captured:
        assert captured is None
