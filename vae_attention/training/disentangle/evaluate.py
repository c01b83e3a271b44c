"""Evaluation of a disentanglement run: held-out recon, disentanglement_lib's FactorVAE metric and the
report's variant, and an attention figure of fixed inputs with each image's two highest-response
per-dimension maps at the L_AD layer. Metric sizes and the figure's image count come from the run's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vae_attention.attention import attention_maps
from vae_attention.figures import attention_overlay_figure
from vae_attention.metrics import factor_vae_metric, seed_variant_metric

if TYPE_CHECKING:
    from vae_attention.training.disentangle.state import DisentangleState

# Figure inputs are fixed so the figures of one trial are comparable over iterations and across trials.
FIGURE_SEED = 7


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


def attention_figure(state: DisentangleState, path: Path) -> None:
    """``config.figure_images`` fixed inputs and, per image, its two highest-response per-dimension maps at the
    L_AD layer."""
    cfg = state.config
    pool = state.eval_indices if len(state.eval_indices) else state.dataset.num_images
    picks = np.random.default_rng(FIGURE_SEED).choice(pool, cfg.figure_images, replace=False)
    x = state.dataset.images(np.asarray(picks)).to(state.device)
    vae = state.models.vae
    was_training = vae.training
    vae.eval()
    try:
        maps = attention_maps(vae, x, cfg.attention_layer, score="per_dim", activation="relu")
    finally:
        vae.train(was_training)
    dims = maps.flatten(-2).sum(-1).topk(2, dim=1).indices
    top = torch.gather(maps, 1, dims[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
    title = f"{cfg.model} γ={cfg.gamma:g} λ={cfg.lambda_ad:g} seed={cfg.seed} iteration {state.iteration}"
    attention_overlay_figure(x, top, dims, title=title, path=path)
