"""The disentanglement update without any Ray: FactorVAE, AD-FactorVAE and β-VAE on dSprites.

``build_models``/``build_optimizers`` make what a run trains; ``train_step`` is the pure update on given
batches (``DisentangleState`` in ``state.py`` draws the batches and owns every generator).

The FactorVAE update (Kim & Mnih, 2018, Algorithm 2) is two optimisers on two batches:
1. VAE: recon + KL + γ·TC(z) [+ λ·L_AD], TC estimated by the discriminator on z from batch 1.
2. Discriminator: tell z (batch 1, detached) from permute_dims(z′) (batch 2, no graph).
Both backward passes run before either optimiser steps: stepping D first would modify weights that the
VAE's TC term still needs for its backward (the classic torch ≥ 1.5 in-place error). The VAE backward is
restricted to VAE parameters, so it neither computes nor leaks gradients into D.

``loop_order="deferred"`` is the report's loop (FACT-2021 ``disentanglement/ad_factorvae.py`` and ``vanilla.py``,
``Solver.train``): ``optim_VAE.step(); optim_D.step()`` at the top of each iteration, on the gradients the
previous iteration left in ``.grad``, and ``D_tc_loss`` built from the VAE loss's own D(z), not detached, so
``D_tc_loss.backward()`` adds ∂L_D/∂θ_encoder to the encoder's gradient (1Konny's original stepped the VAE before
that backward, so there the extra term was zeroed before use). Consequences: the first iteration changes no
weight, iteration t applies the gradients of iteration t − 1, the last iteration's gradients are never applied,
and the VAE descends recon + KL + γ·TC + L_D(encoder part). The pending gradients are part of the run's state
(``DisentangleState.state_dict``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from vae_attention import losses
from vae_attention.attention import capture_activation, check_layer, encode_with_activation, maps_from_activation
from vae_attention.encoder_chain import EncoderChain
from vae_attention.errors import ConfigError
from vae_attention.models import Discriminator, DSpritesVAE, reparameterize
from vae_attention.models.dsprites import AllConvDSpritesVAE
from vae_attention.training.disentangle.config import DisentangleConfig


class Models(NamedTuple):
    vae: nn.Module
    discriminator: nn.Module | None


class Optimizers(NamedTuple):
    vae: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None


VAE_ARCHITECTURES = {"kim_mnih": DSpritesVAE, "konny": AllConvDSpritesVAE}


def build_vae(config: DisentangleConfig, generator: torch.Generator | None = None) -> nn.Module:
    """The dSprites VAE of ``config.architecture`` (see ``vae_attention.models.dsprites``)."""
    return VAE_ARCHITECTURES[config.architecture](
        config.z_dim, generator=generator, encoder_fc_relu=config.encoder_fc_relu
    )


def build_models(config: DisentangleConfig, device: torch.device | str = "cpu") -> Models:
    """Models initialised N(0, 0.02) from the config's seed (on CPU, so every device starts identically),
    compiled as ``config.compile`` says (``compile_models``)."""
    init = torch.Generator().manual_seed(config.seed)
    vae = build_vae(config, generator=init).to(device)
    disc = None
    if config.uses_discriminator:
        disc = Discriminator(config.z_dim, config.d_hidden_units, config.d_hidden_layers, generator=init).to(device)
    models = Models(vae, disc)
    compile_models(models, config)
    return models


def check_model(config: DisentangleConfig) -> None:
    """Fail early (ConfigError) when the attention layer is not a (B, K, h, w) layer of the configured VAE, or
    ``grad_method="chain"`` cannot write out the layers above it."""
    vae = build_vae(config)
    check_layer(vae, config.attention_layer, torch.zeros(1, 1, 64, 64))
    if config.grad_method == "chain" and EncoderChain.after(vae, config.attention_layer) is None:
        raise ConfigError(f"grad_method='chain' needs Conv2d/Linear/ReLU/Flatten/Identity layers above "
                          f"{config.attention_layer} in the {config.architecture} VAE; use auto, loop or batched")
    if config.grad_method == "chain" and config.precision == "bf16":
        raise ConfigError("grad_method='chain' needs float32 activations; with precision=bf16 use auto or loop")


def compile_models(models: Models, config: DisentangleConfig, backend: str = "inductor") -> list[str]:
    """``torch.compile`` in place (``nn.Module.compile``: parameter names and checkpoints unchanged) the modules
    of the step that are differentiated only once, under ``config.compile``; returns their names.

    Compiled: the decoder and the discriminator; the encoder too for FactorVAE and β-VAE. Not for AD-FactorVAE:
    its maps hook the encoder's layer at every step, and by autograd's routes (``grad_method`` loop/batched, and
    "auto" on CUDA) a differentiable L_AD backpropagates through the encoder's own backward (a double
    backward), which torch.compile does not support. The reparameterisation
    (a draw from the run's generator) and the losses stay eager. ``mode="reduce-overhead"`` adds CUDA graphs to
    the compiled parts on CUDA (no whole-step graph capture is implemented). ``backend`` (e.g. ``"aot_eager"``
    in tests, where inductor's compile time would dominate) takes no mode.
    """
    if config.compile == "off":
        return []
    # The VAE backward keeps its graph for D's loss (retain_graph), which AOTAutograd's donated buffers (a
    # memory-only optimisation that frees saved tensors during the first backward) forbid; process-wide switch.
    torch._functorch.config.donated_buffer = False
    vae, disc = models
    parts = {"vae.decoder": vae.decoder}
    if config.model != "ad_factorvae":
        parts["vae.encoder"] = vae.encoder
    if disc is not None:
        parts["discriminator"] = disc
    for module in parts.values():
        module.compile(backend=backend, mode=config.compile if backend == "inductor" else None)
    return list(parts)


def build_optimizers(config: DisentangleConfig, models: Models, fused: bool | None = None) -> Optimizers:
    """Adam for the VAE and the discriminator. ``fused``: one kernel per parameter group instead of a foreach
    chain (the same update up to float rounding); None = fused on CUDA, where a step is launch-bound, and the
    default foreach implementation on CPU."""
    if fused is None:
        fused = next(models.vae.parameters()).is_cuda
    vae_opt = torch.optim.Adam(models.vae.parameters(), lr=config.lr, betas=config.betas, fused=fused or None)
    d_opt = None
    if models.discriminator is not None:
        d_opt = torch.optim.Adam(models.discriminator.parameters(), lr=config.d_lr, betas=config.d_betas,
                                 fused=fused or None)
    return Optimizers(vae_opt, d_opt)


def ad_attention_maps(
    vae: nn.Module, x: torch.Tensor, config: DisentangleConfig, generator: torch.Generator | None, **options
) -> torch.Tensor:
    """``ad_maps_from_activation`` after a fresh encode of ``x`` (for callers without a training forward at hand;
    ``train_step`` takes the activation from its own forward instead). ``options``: as ``ad_maps_from_activation``.
    """
    mu, feats = encode_with_activation(vae, x, config.attention_layer)
    return ad_maps_from_activation(mu, feats, config, generator, size=tuple(x.shape[-2:]),
                                   chain=EncoderChain.after(vae, config.attention_layer), **options)


def ad_maps_from_activation(
    mu: torch.Tensor,
    feats: torch.Tensor,
    config: DisentangleConfig,
    generator: torch.Generator | None,
    *,
    size: tuple[int, int],
    score: Literal["per_dim", "sum"] | None = None,
    create_graph: bool = True,
    chain: EncoderChain | None = None,
) -> torch.Tensor:
    """The maps L_AD compares under ``config.pairs``, from μ (B, z) and the attention layer's activation
    ``feats`` of the same forward pass, computing only the dims the policy needs.

    ``score``: ``"per_dim"`` (s = μ_i; (B, n, H, W) maps of the dims ``config.pairs`` selects) or ``"sum"``
    (s = Σ_i μ_i; one (B, H, W) map per image); None = what ``config.pairs`` implies (Σμ for
    ``consecutive_images``). ``create_graph=False`` gives detached maps (an L_AD that trains nothing).
    ``top2`` ranks all dims on detached maps, then computes the chosen two with the graph, from the same forward.
    ``chain``: ``EncoderChain.after(vae, config.attention_layer)``, for ``grad_method`` "auto"/"chain".
    """
    kwargs = dict(
        activation=config.ad_activation,
        normalize_grads=config.normalize_grads,
        grad_method=config.grad_method,
        size=size,
        chain=chain,
    )
    if score is None:
        score = "sum" if config.pairs == "consecutive_images" else "per_dim"
    if score == "sum":
        return maps_from_activation(mu, feats, score="sum", create_graph=create_graph, **kwargs)
    if config.pairs == "top2":
        ranking = maps_from_activation(mu, feats, score="per_dim", create_graph=False, **kwargs)
        dims = losses.top2_dims(ranking)
    else:
        dims = losses.select_pair_dims(config.pairs, config.z_dim, generator)
    return maps_from_activation(mu, feats, score="per_dim", dims=dims, create_graph=create_graph, **kwargs)


def apply_pending_updates(optimizers: Optimizers) -> None:
    """The top of a ``deferred`` iteration: both optimisers step on the gradients the previous iteration left in
    ``.grad``. Adam skips parameters whose ``.grad`` is None, so at the first iteration nothing changes."""
    optimizers.vae.step()
    if optimizers.discriminator is not None:
        optimizers.discriminator.step()


def train_step(
    models: Models,
    optimizers: Optimizers,
    batch: torch.Tensor,
    batch2: torch.Tensor | None,
    config: DisentangleConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimiser iteration on ``batch`` (and ``batch2`` for the discriminator); returns float metrics.

    ``sequential``: gradients, then both optimisers step. ``deferred``: the optimisers first step on the previous
    call's gradients, and this call's gradients stay in ``.grad`` for the next call (see the module docstring).
    Reading the floats waits for the device; ``train_step_tensors`` is the same update without that wait.
    """
    metrics = train_step_tensors(models, optimizers, batch, batch2, config, generator)
    return {k: float(v) for k, v in metrics.items()}


def train_step_tensors(
    models: Models,
    optimizers: Optimizers,
    batch: torch.Tensor,
    batch2: torch.Tensor | None,
    config: DisentangleConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """``train_step`` with the metrics as detached 0-d tensors on the device: the step itself never reads a
    value back to the host (``DisentangleState`` sums them on the device and reads them at report time), except
    for ``pairs="random_pair"``/``top2`` dims, which are drawn or ranked on the device and then index the maps.
    """
    vae, disc = models
    deferred = config.loop_order == "deferred"
    if deferred:
        apply_pending_updates(optimizers)
    vae.train()
    # AD-FactorVAE takes its maps from this forward's graph: one encoder pass per step, not two
    with (capture_activation(vae, config.attention_layer, enabled=config.model == "ad_factorvae") as captured,
          torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")):
        out = vae(batch, generator=generator)
    if config.precision == "bf16":  # losses and the discriminator in fp32 (the maps keep the bf16 activation)
        out = type(out)(*(t.float() for t in out))
    recon = losses.bernoulli_recon_loss(out.recon_logits, batch)
    kld = losses.gaussian_kl(out.mu, out.logvar)
    metrics: dict[str, torch.Tensor] = {"recon_loss": recon, "kld": kld}

    if config.model == "betavae":
        vae_loss = losses.beta_vae_loss(recon, kld, config.beta)
    else:
        d_joint = disc(out.z)
        tc = losses.discriminator_tc(d_joint)
        vae_loss = recon + kld + config.gamma * tc
        metrics["tc"] = tc
        if config.model == "ad_factorvae":
            # ad_gradient="detached": maps without a graph, so λ·L_AD is a constant and trains nothing (the report)
            maps = ad_maps_from_activation(out.mu, captured.tensor, config, generator, size=tuple(batch.shape[-2:]),
                                           score=config.ad_map_score,
                                           create_graph=config.ad_gradient == "differentiable",
                                           chain=EncoderChain.after(vae, config.attention_layer))
            ad, pair_stats = losses.attention_disentanglement_with_stats(maps, config.pairs, generator,
                                                                         as_tensors=True)
            vae_loss = vae_loss + config.lambda_ad * ad
            metrics["ad_loss"] = ad
            metrics["zero_map_fraction"] = losses.zero_map_fraction(maps, as_tensor=True)
            metrics["dropped_pair_fraction"] = pair_stats["dropped_pair_fraction"]
            metrics["zero_score_pair_fraction"] = pair_stats["zero_score_pair_fraction"]
    metrics["vae_loss"] = vae_loss

    optimizers.vae.zero_grad(set_to_none=True)
    # D's loss below reuses this loss's D(z) (kept graph): sequential restricts its backward to D's parameters,
    # which gives D exactly the gradient of a second D(z.detach()) forward, one discriminator forward cheaper
    torch.autograd.backward(vae_loss, inputs=list(vae.parameters()), retain_graph=disc is not None)

    if disc is not None:
        with torch.no_grad():
            mu2, logvar2 = vae.encode(batch2)
            z_perm = losses.permute_dims(reparameterize(mu2, logvar2, generator), generator)
        d_perm = disc(z_perm)
        d_loss = losses.discriminator_loss(d_joint, d_perm)
        optimizers.discriminator.zero_grad(set_to_none=True)
        # deferred = the report's D_tc_loss.backward(): ∂L_D/∂θ_encoder accumulates onto the VAE's gradient
        inputs = list(disc.parameters()) + (list(vae.parameters()) if deferred else [])
        torch.autograd.backward(d_loss, inputs=inputs)
        metrics["d_loss"] = d_loss
        metrics["d_accuracy"] = losses.discriminator_accuracy(d_joint.detach(), d_perm.detach())

    if not deferred:
        optimizers.vae.step()
        if disc is not None:
            optimizers.discriminator.step()
    return {k: v.detach() for k, v in metrics.items()}
