"""A disentanglement run as the shared loop sees it: ``LoopConfig`` and the ``DisentangleTrainee`` adapter.

Evaluations: held-out recon, both FactorVAE metric variants, and an attention figure of fixed inputs with
each image's two highest-response per-dimension maps at the L_AD layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_attention.attention import attention_maps
from vae_attention.config import config_from_dict
from vae_attention.errors import ConfigError
from vae_attention.figures import attention_overlay_figure
from vae_attention.metrics import factor_vae_metric, seed_variant_metric
from vae_attention.training.loop import check_cadences
from vae_attention.training.state import TrainState

# Figure inputs are fixed so the figures of one trial are comparable over iterations and across trials.
FIGURE_SEED = 7


@dataclass(frozen=True)
class LoopConfig:
    iterations: int = 150_000
    report_every: int = 500
    checkpoint_every: int = 5_000
    eval_every: int = 10_000
    # disentanglement_lib's FactorVAE metric sizes (≈ 1 M images drawn, ~0.5 M unique encodes per eval)
    metric_batch_size: int = 64
    metric_num_train: int = 10_000
    metric_num_eval: int = 5_000
    metric_num_variance: int = 10_000
    # the report's code: L = 100, 800 stratified votes
    seed_metric_batch_size: int = 100
    seed_metric_votes: int = 800
    figure_images: int = 6

    def __post_init__(self) -> None:
        check_cadences(self, "iterations")
        for name in ("metric_batch_size", "metric_num_train", "metric_num_eval", "metric_num_variance",
                     "seed_metric_batch_size", "seed_metric_votes", "figure_images"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def total(self) -> int:
        return self.iterations

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        return config_from_dict(cls, values)


def evaluate(state: TrainState, loop: LoopConfig) -> dict[str, float]:
    """Held-out recon and both FactorVAE metric variants, each from a fresh ``default_rng(0)``.

    Fresh generators (as disentanglement_lib does) make evaluations comparable across iterations and
    trials and leave the training generators untouched, so evaluating never changes the trajectory.
    """
    dlib = factor_vae_metric(
        state.representation, state.dataset, np.random.default_rng(0), variant="dlib",
        batch_size=loop.metric_batch_size, num_train=loop.metric_num_train, num_eval=loop.metric_num_eval,
        num_variance_estimate=loop.metric_num_variance,
    )
    seed = seed_variant_metric(
        state.representation, state.dataset, np.random.default_rng(0),
        batch_size=loop.seed_metric_batch_size, num_votes=loop.seed_metric_votes,
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


def attention_figure(state: TrainState, num_images: int, path: Path) -> None:
    """Fixed inputs and, per image, its two highest-response per-dimension maps at the L_AD layer."""
    cfg = state.config
    pool = state.eval_indices if len(state.eval_indices) else state.dataset.num_images
    picks = np.random.default_rng(FIGURE_SEED).choice(pool, num_images, replace=False)
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


class DisentangleTrainee:
    """``TrainState`` + ``LoopConfig`` as the shared loop's trainee (unit = one optimiser iteration)."""

    step_key = "iteration"

    def __init__(self, state: TrainState, loop: LoopConfig):
        self.state = state
        self.loop = loop

    @property
    def progress(self) -> int:
        return self.state.iteration

    def advance(self) -> None:
        self.state.step()

    def pop_window(self) -> dict[str, float]:
        return self.state.pop_window()

    def evaluate(self, scratch_dir: Path) -> tuple[dict[str, float], Path]:
        figure = Path(scratch_dir) / f"attention_{self.state.iteration:07d}.png"
        attention_figure(self.state, self.loop.figure_images, figure)
        return evaluate(self.state, self.loop), figure

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def weights(self) -> dict[str, torch.Tensor]:
        return self.state.models.vae.state_dict()

    def load(self, path: Path) -> None:
        self.state.load(path)
