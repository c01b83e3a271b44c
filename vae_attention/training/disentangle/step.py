"""The disentanglement update without any Ray: FactorVAE, AD-FactorVAE and β-VAE on dSprites.

``build_models``/``build_optimizers`` make what a run trains; ``train_step`` is the pure update on given
batches (``DisentangleState`` in ``state.py`` draws the batches and owns every generator).

The FactorVAE update (Kim & Mnih, 2018, Algorithm 2) is two optimisers on two batches:
1. VAE: recon + KL + γ·TC(z) [+ λ·L_AD], TC estimated by the discriminator on z from batch 1.
2. Discriminator: tell z (batch 1, detached) from permute_dims(z′) (batch 2, no graph).
Both backward passes run before either optimiser steps: stepping D first would modify weights that the
VAE's TC term still needs for its backward (the classic torch ≥ 1.5 in-place error). The VAE backward is
restricted to VAE parameters, so it neither computes nor leaks gradients into D.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vae_attention import losses
from vae_attention.attention import attention_maps, check_layer
from vae_attention.models import Discriminator, DSpritesVAE, reparameterize
from vae_attention.training.disentangle.config import DisentangleConfig


class Models(NamedTuple):
    vae: nn.Module
    discriminator: nn.Module | None


class Optimizers(NamedTuple):
    vae: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None


def build_models(config: DisentangleConfig, device: torch.device | str = "cpu") -> Models:
    """Models initialised N(0, 0.02) from the config's seed (on CPU, so every device starts identically)."""
    init = torch.Generator().manual_seed(config.seed)
    vae = DSpritesVAE(config.z_dim, generator=init).to(device)
    disc = None
    if config.uses_discriminator:
        disc = Discriminator(config.z_dim, config.d_hidden_units, config.d_hidden_layers, generator=init).to(device)
    return Models(vae, disc)


def check_model(config: DisentangleConfig) -> None:
    """Fail early (ConfigError) when the attention layer is not a conv of the dSprites VAE."""
    check_layer(DSpritesVAE(config.z_dim), config.attention_layer, torch.zeros(1, 1, 64, 64))


def build_optimizers(config: DisentangleConfig, models: Models) -> Optimizers:
    vae_opt = torch.optim.Adam(models.vae.parameters(), lr=config.lr, betas=config.betas)
    d_opt = None
    if models.discriminator is not None:
        d_opt = torch.optim.Adam(models.discriminator.parameters(), lr=config.d_lr, betas=config.d_betas)
    return Optimizers(vae_opt, d_opt)


def ad_attention_maps(
    vae: nn.Module, x: torch.Tensor, config: DisentangleConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """The differentiable maps L_AD compares under ``config.pairs``, computing only the dims it needs."""
    kwargs = dict(
        activation=config.ad_activation,
        normalize_grads=config.normalize_grads,
        grad_method=config.grad_method,
    )
    layer = config.attention_layer
    if config.pairs == "consecutive_images":
        return attention_maps(vae, x, layer, score="sum", create_graph=True, **kwargs)
    if config.pairs == "top2":
        ranking = attention_maps(vae, x, layer, score="per_dim", create_graph=False, **kwargs)
        dims = losses.top2_dims(ranking)
    else:
        dims = losses.select_pair_dims(config.pairs, config.z_dim, generator)
    return attention_maps(vae, x, layer, score="per_dim", dims=dims, create_graph=True, **kwargs)


def train_step(
    models: Models,
    optimizers: Optimizers,
    batch: torch.Tensor,
    batch2: torch.Tensor | None,
    config: DisentangleConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimiser iteration on ``batch`` (and ``batch2`` for the discriminator); returns float metrics."""
    vae, disc = models
    vae.train()
    out = vae(batch, generator=generator)
    recon = losses.bernoulli_recon_loss(out.recon_logits, batch)
    kld = losses.gaussian_kl(out.mu, out.logvar)
    metrics: dict[str, torch.Tensor | float] = {"recon_loss": recon, "kld": kld}

    if config.model == "betavae":
        vae_loss = losses.beta_vae_loss(recon, kld, config.beta)
    else:
        d_joint = disc(out.z)
        tc = losses.discriminator_tc(d_joint)
        vae_loss = recon + kld + config.gamma * tc
        metrics["tc"] = tc
        if config.model == "ad_factorvae":
            maps = ad_attention_maps(vae, batch, config, generator)
            ad = losses.attention_disentanglement(maps, config.pairs, generator)
            vae_loss = vae_loss + config.lambda_ad * ad
            metrics["ad_loss"] = ad
            metrics["zero_map_fraction"] = losses.zero_map_fraction(maps)
    metrics["vae_loss"] = vae_loss

    optimizers.vae.zero_grad(set_to_none=True)
    torch.autograd.backward(vae_loss, inputs=list(vae.parameters()))

    if disc is not None:
        with torch.no_grad():
            mu2, logvar2 = vae.encode(batch2)
            z_perm = losses.permute_dims(reparameterize(mu2, logvar2, generator), generator)
        d_joint = disc(out.z.detach())
        d_perm = disc(z_perm)
        d_loss = losses.discriminator_loss(d_joint, d_perm)
        optimizers.discriminator.zero_grad(set_to_none=True)
        d_loss.backward()
        metrics["d_loss"] = d_loss
        metrics["d_accuracy"] = losses.discriminator_accuracy(d_joint.detach(), d_perm.detach())

    optimizers.vae.step()
    if disc is not None:
        optimizers.discriminator.step()
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in metrics.items()}
