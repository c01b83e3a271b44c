"""``build_optimizers``: fused Adam only where asked or on CUDA, with the same updates as the default Adam."""

from __future__ import annotations

import torch

from vae_attention.training import DisentangleConfig, build_models, build_optimizers, train_step

SMALL = dict(d_hidden_units=32, d_hidden_layers=1, batch_size=4, eval_size=8)


def _two_steps(fused):
    config = DisentangleConfig(model="factorvae", **SMALL)
    models = build_models(config)
    optimizers = build_optimizers(config, models, fused=fused)
    generator = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(1)
    for _ in range(2):
        x, x2 = ((torch.rand(4, 1, 64, 64, generator=data) > 0.7).float() for _ in range(2))
        train_step(models, optimizers, x, x2, config, generator)
    return models, optimizers


def test_fused_adam_updates_equal_the_default_and_cpu_default_is_not_fused():
    default_models, default_opts = _two_steps(None)
    fused_models, fused_opts = _two_steps(True)
    assert not default_opts.vae.defaults["fused"] and fused_opts.vae.defaults["fused"]
    assert fused_opts.discriminator.defaults["fused"]
    for module in ("vae", "discriminator"):
        start = getattr(build_models(DisentangleConfig(model="factorvae", **SMALL)), module).state_dict()
        for name, tensor in getattr(default_models, module).state_dict().items():
            assert not torch.equal(tensor, start[name]) or "bias" in name  # the steps moved the weights
            # Adam moves a weight by ~lr = 1e-4 a step; 1e-8 is 1e-4 of that (float32 rounding of ~0.02 weights is 2e-9)
            torch.testing.assert_close(getattr(fused_models, module).state_dict()[name], tensor, rtol=0, atol=1e-8)
