"""Evaluation of a disentanglement run: held-out recon, disentanglement_lib's FactorVAE metric and the
report's variant, an attention figure of fixed inputs with each image's two highest-response per-dimension maps
at the L_AD layer, and latent/attention traversals with a reconstruction grid (``vae_attention.traversals``).
Metric sizes and the figures' image count come from the run's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vae_attention.attention import attention_maps
from vae_attention.figures import attention_overlay_figure
from vae_attention.metrics import factor_vae_metric, seed_variant_metric
from vae_attention.traversals import latent_traversal, reconstruct, traversal_attention, traversal_figures

if TYPE_CHECKING:
    from vae_attention.training.disentangle.state import DisentangleState

# Figure inputs are fixed so the figures of one trial are comparable over iterations and across trials.
FIGURE_SEED = 7
# Traversals: the first few figure inputs as anchors, every latent dimension swept over ±3 prior σ in 7 steps
# (odd, so the middle column is the anchor's own reconstruction); ~3·10·7 = 210 decodes, well under a second.
TRAVERSAL_ANCHORS = 3
TRAVERSAL_STEPS = 7
TRAVERSAL_SPAN = 3.0


def evaluate(state: DisentangleState) -> dict[str, float]:
    """Held-out recon and both FactorVAE metrics, each from a fresh ``default_rng(0)``.

    Fresh generators (as disentanglement_lib does) make evaluations comparable across iterations and
    trials and leave the training generators untouched, so evaluating never changes the trajectory.
    """
    cfg = state.config
    dlib = factor_vae_metric(
        state.representation, state.dataset, np.random.default_rng(0),
        batch_size=cfg.metric_batch_size, num_train=cfg.metric_num_train, num_eval=cfg.metric_num_eval,
        num_variance_estimate=cfg.metric_num_variance,
    )
    seed = seed_variant_metric(
        state.representation, state.dataset, np.random.default_rng(0),
        batch_size=cfg.seed_metric_batch_size, num_votes=cfg.seed_metric_votes,
    )
    return {
        "eval_recon_loss": state.eval_recon_loss(),
        "disentanglement": float(dlib["eval_accuracy"]),
        "disentanglement_train": float(dlib["train_accuracy"]),
        "num_active_dims": float(dlib["num_active_dims"]),
        "disentanglement_seed": float(seed["eval_accuracy"]),
        "num_active_dims_seed": float(seed["num_active_dims"]),
        "metric_seconds": float(dlib["elapsed_s"] + seed["elapsed_s"]),
    }


def figure_inputs(state: DisentangleState) -> torch.Tensor:
    """The ``config.figure_images`` fixed inputs of every figure (held-out images when there are any)."""
    pool = state.eval_indices if len(state.eval_indices) else state.dataset.num_images
    picks = np.random.default_rng(FIGURE_SEED).choice(pool, state.config.figure_images, replace=False)
    return state.dataset.images(np.asarray(picks)).to(state.device)


def _title(state: DisentangleState) -> str:
    cfg = state.config
    return f"{cfg.model} γ={cfg.gamma:g} λ={cfg.lambda_ad:g} seed={cfg.seed} iteration {state.iteration}"


def attention_figure(state: DisentangleState, path: Path) -> None:
    """``config.figure_images`` fixed inputs and, per image, its two highest-response per-dimension maps at the
    L_AD layer."""
    cfg = state.config
    x = figure_inputs(state)
    vae = state.models.vae
    was_training = vae.training
    vae.eval()
    try:
        maps = attention_maps(vae, x, cfg.attention_layer, score="per_dim", activation="relu")
    finally:
        vae.train(was_training)
    dims = maps.flatten(-2).sum(-1).topk(2, dim=1).indices
    top = torch.gather(maps, 1, dims[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
    attention_overlay_figure(x, top, dims, title=_title(state), path=path)


def traversal_figure_files(state: DisentangleState, directory: Path) -> list[Path]:
    """Write ``traversal_<iteration>.png``/``.gif`` and ``reconstruction_<iteration>.png`` into ``directory``.

    Anchors: the first ``TRAVERSAL_ANCHORS`` figure inputs; every latent dimension swept over
    ±``TRAVERSAL_SPAN`` prior σ around the anchor's μ, with the per-dimension attention map of the swept
    dimension at the L_AD layer (``attention_layer``, ``ad_activation``); reconstructions of all figure inputs.
    """
    cfg = state.config
    x = figure_inputs(state)
    vae = state.models.vae
    dims = list(range(cfg.z_dim))
    traversed = latent_traversal(vae, x[:TRAVERSAL_ANCHORS], dims, TRAVERSAL_STEPS, TRAVERSAL_SPAN)
    maps = traversal_attention(vae, traversed, dims, cfg.attention_layer, activation=cfg.ad_activation)
    return traversal_figures(x, reconstruct(vae, x), traversed, maps, dims, TRAVERSAL_SPAN, state.iteration,
                             directory, title=_title(state))


def evaluation_figures(state: DisentangleState, directory: Path) -> list[Path]:
    """Every figure of one evaluation, written into ``directory``: ``attention_<iteration>.png`` first, then
    the traversal and reconstruction files of ``traversal_figure_files``."""
    attention = Path(directory) / f"attention_{state.iteration:07d}.png"
    attention_figure(state, attention)
    return [attention, *traversal_figure_files(state, directory)]
