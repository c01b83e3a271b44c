"""``EncoderChain``: ∂μ_i/∂A written out through the encoder's layers equals autograd's, to first and second order.

The oracle is ``torch.autograd.grad`` on the same forward (``grad_method="loop"``); the second-order check
differentiates a function of α (as L_AD does) w.r.t. every encoder weight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vae_attention.attention import attention_maps, encode_with_activation, per_dim_channel_weights
from vae_attention.encoder_chain import EncoderChain
from vae_attention.errors import ConfigError
from vae_attention.models.dsprites import AllConvDSpritesVAE, DSpritesVAE
from vae_attention.training import DisentangleConfig, DisentangleState
from vae_attention.training.disentangle.step import check_model

CASES = [(DSpritesVAE, "encoder.0"), (DSpritesVAE, "encoder.2"), (DSpritesVAE, "encoder.6"),
         (DSpritesVAE, "encoder.1"), (AllConvDSpritesVAE, "encoder.0"), (AllConvDSpritesVAE, "encoder.8")]


def _images(n=3, seed=0):
    return (torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@pytest.mark.parametrize("model_cls,layer", CASES)
def test_per_dim_gradients_and_their_weight_gradients_match_autograd(model_cls, layer):
    vae = model_cls(z_dim=4, generator=torch.Generator().manual_seed(1))
    mu, feats = encode_with_activation(vae, _images(), layer)
    chain = EncoderChain.after(vae, layer)
    assert chain is not None
    index = torch.tensor([[0, 3, 1], [2, 2, 0], [1, 0, 3]])  # per-image dims, repeats allowed
    by_chain = per_dim_channel_weights(mu, feats, index, create_graph=True, method="chain", chain=chain)
    by_autograd = per_dim_channel_weights(mu, feats, index, create_graph=True, method="loop")
    scale = by_autograd.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(by_chain, by_autograd, rtol=1e-5, atol=1e-6 * scale)
    weights = [p for name, p in vae.named_parameters() if name.startswith("encoder") and p.dim() > 1]
    target = torch.randn(by_chain.shape, generator=torch.Generator().manual_seed(2))
    first = torch.autograd.grad((by_chain * target).sum(), weights, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad((by_autograd * target).sum(), weights, allow_unused=True)
    for weight, a, b in zip(weights, first, second, strict=True):
        a = torch.zeros_like(weight) if a is None else a  # unused: a layer below A, or the logvar rows
        b = torch.zeros_like(weight) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * max(b.abs().max().item(), 1e-30))


def test_without_a_graph_the_gradients_are_detached():
    vae = DSpritesVAE(z_dim=4, generator=torch.Generator().manual_seed(1))
    mu, feats = encode_with_activation(vae, _images(), "encoder.0")
    grads = list(EncoderChain.after(vae, "encoder.0").per_dim_gradients(feats, torch.zeros(3, 2, dtype=torch.long),
                                                                        create_graph=False))
    assert len(grads) == 2 and all(not g.requires_grad and g.shape == feats.shape for g in grads)


def test_attention_maps_are_the_same_by_every_method():
    vae = DSpritesVAE(z_dim=4, generator=torch.Generator().manual_seed(3))
    x = _images(2, seed=4)
    maps = {method: attention_maps(vae, x, "encoder.2", score="per_dim", grad_method=method)
            for method in ("chain", "loop", "batched")}
    torch.testing.assert_close(maps["chain"], maps["loop"])
    torch.testing.assert_close(maps["batched"], maps["loop"])


def test_auto_takes_the_chain_on_cpu_only_for_float32(monkeypatch):
    vae = DSpritesVAE(z_dim=4, generator=torch.Generator().manual_seed(3))
    mu, feats = encode_with_activation(vae, _images(), "encoder.0")
    chain, used = EncoderChain.after(vae, "encoder.0"), []
    original = chain.per_dim_gradients
    monkeypatch.setattr(chain, "per_dim_gradients", lambda *a, **k: used.append(1) or original(*a, **k))
    index = torch.zeros(3, 1, dtype=torch.long)
    per_dim_channel_weights(mu, feats, index, create_graph=False, chain=chain)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the training step's bf16 forward
        mu16, feats16 = encode_with_activation(vae, _images(), "encoder.0")
    assert feats16.dtype == torch.bfloat16
    per_dim_channel_weights(mu16, feats16, index, create_graph=False, chain=chain)
    assert used == [1]  # the bf16 activation went to autograd's loop
    with pytest.raises(ConfigError, match="float32"):
        list(chain.per_dim_gradients(feats16, index, create_graph=False))
    with pytest.raises(ConfigError, match="bf16"):
        check_model(DisentangleConfig(grad_method="chain", precision="bf16"))


def test_where_it_does_not_apply_there_is_no_chain():
    vae = DSpritesVAE(z_dim=4)
    assert EncoderChain.after(vae, "decoder.5") is None  # not above the encoder's layer
    assert EncoderChain.after(vae, "encoder.11") is None  # the last layer: nothing above it
    assert EncoderChain.after(vae, "encoder.x") is None

    class NormedVAE(DSpritesVAE):  # a batch norm above the layer is not piecewise linear in A per image
        def __init__(self):
            super().__init__(z_dim=4)
            self.encoder[1] = nn.BatchNorm2d(32)

    assert EncoderChain.after(NormedVAE(), "encoder.0") is None

    class OptedOut(DSpritesVAE):
        mu_is_leading_encoder_output = False

    class Inherited(DSpritesVAE):  # may change encode: the opt-in is not inherited
        def encode(self, x):
            mu, logvar = super().encode(x)
            return torch.tanh(mu), logvar

    assert EncoderChain.after(OptedOut(), "encoder.0") is None
    assert EncoderChain.after(Inherited(), "encoder.0") is None
    mu, feats = encode_with_activation(vae, _images(), "encoder.0")
    with pytest.raises(ConfigError, match="chain"):
        per_dim_channel_weights(mu, feats, torch.zeros(3, 1, dtype=torch.long), create_graph=False, method="chain")
    with pytest.raises(ConfigError, match="grad_method='chain'"):
        check_model(DisentangleConfig(architecture="konny", attention_layer="encoder.10", grad_method="chain"))


def test_training_steps_are_the_same_with_the_chain_as_with_autograd(tmp_path):
    from vae_attention.data import DSprites

    # λ large, so L_AD's gradient sets the encoder's update: a wrong second-order term would change its direction
    losses, weights = {}, {}
    for method in ("chain", "loop"):
        config = DisentangleConfig(model="ad_factorvae", batch_size=8, grad_method=method, d_hidden_units=32,
                                   d_hidden_layers=2, eval_size=64, seed=5, lambda_ad=1e4)
        state = DisentangleState(config, DSprites(grid=(3, 2, 4, 8, 8), cache_dir=tmp_path))
        losses[method] = [{k: float(v) for k, v in state.step().items()} for _ in range(3)]
        weights[method] = state.models.vae.encoder[2].weight.detach().clone()
    for chained, reference in zip(losses["chain"], losses["loop"], strict=True):
        for key in ("vae_loss", "ad_loss", "recon_loss", "d_loss"):
            assert chained[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    torch.testing.assert_close(weights["chain"], weights["loop"], rtol=0, atol=1e-7)
