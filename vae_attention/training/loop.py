"""The disentanglement training loop: step, report, checkpoint, evaluate. It knows nothing of Ray.

The caller passes ``report(metrics, write_checkpoint)``; ``write_checkpoint`` is None or a function that
writes the checkpoint files into a directory the caller owns (the Ray adapter hands it a temp dir and
reports it as a ``tune.Checkpoint``). Reports, checkpoints and evaluations happen on report boundaries:
checkpoint and eval cadences must be multiples of ``report_every``, so a restored run never has a
half-filled report window.

A checkpoint directory holds ``state.pt`` (the whole ``TrainState``: models, optimisers, generators;
~66 MB at the default discriminator size), ``metrics.json``, and after evaluations ``figures/*.png``; the
final one adds ``vae.pt`` (VAE weights only, ~2 MB).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_attention.attention import attention_maps
from vae_attention.config import config_from_dict
from vae_attention.errors import ConfigError, StudyError
from vae_attention.figures import attention_overlay_figure
from vae_attention.metrics import factor_vae_metric

STATE_FILE = "state.pt"
WEIGHTS_FILE = "vae.pt"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"
# Figure inputs are fixed so the figures of one trial are comparable over iterations and across trials.
FIGURE_SEED = 7

WriteCheckpoint = Callable[[Path], None]
Report = Callable[[dict[str, Any], "WriteCheckpoint | None"], None]


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
        for name in ("iterations", "report_every", "checkpoint_every", "eval_every", "metric_batch_size",
                     "metric_num_train", "metric_num_eval", "metric_num_variance", "seed_metric_batch_size",
                     "seed_metric_votes", "figure_images"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("checkpoint_every", "eval_every"):
            if getattr(self, name) % self.report_every:
                raise ConfigError(f"{name}={getattr(self, name)} must be a multiple of report_every="
                                  f"{self.report_every} (set it with --set report_every=N)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        return config_from_dict(cls, values)


def evaluate(state, loop: LoopConfig) -> dict[str, float]:
    """Held-out recon and both FactorVAE metric variants, each from a fresh ``default_rng(0)``.

    Fresh generators (as disentanglement_lib does) make evaluations comparable across iterations and
    trials and leave the training generators untouched, so evaluating never changes the trajectory.
    """
    dlib = factor_vae_metric(
        state.representation, state.dataset, np.random.default_rng(0), variant="dlib",
        batch_size=loop.metric_batch_size, num_train=loop.metric_num_train, num_eval=loop.metric_num_eval,
        num_variance_estimate=loop.metric_num_variance,
    )
    seed = factor_vae_metric(
        state.representation, state.dataset, np.random.default_rng(0), variant="seed",
        batch_size=loop.seed_metric_batch_size, num_train=loop.seed_metric_votes,
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


def attention_figure(state, loop: LoopConfig, path: Path) -> None:
    """Fixed inputs and, per image, its two highest-response per-dimension maps at the L_AD layer."""
    cfg = state.config
    picks = np.random.default_rng(FIGURE_SEED).choice(state.eval_indices if len(state.eval_indices)
                                                      else state.dataset.num_images, loop.figure_images)
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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_writer(state, metrics: dict[str, Any], figure_from: Path | None, final: bool) -> WriteCheckpoint:
    def write(directory: Path) -> None:
        directory = Path(directory)
        _atomic_torch_save(state.state_dict(), directory / STATE_FILE)
        if final:
            _atomic_torch_save(state.models.vae.state_dict(), directory / WEIGHTS_FILE)
        if figure_from is not None:
            (directory / FIGURES_DIR).mkdir(exist_ok=True)
            os.replace(figure_from, directory / FIGURES_DIR / figure_from.name)
        (directory / METRICS_FILE).write_text(json.dumps({**metrics, "final": final}, sort_keys=True))

    return write


def run_loop(state, loop: LoopConfig, report: Report, scratch_dir: Path) -> None:
    """Train ``state`` up to ``loop.iterations``; ``scratch_dir`` holds figures until they are checkpointed."""
    step_seconds = 0.0
    steps_timed = 0
    while state.iteration < loop.iterations:
        tick = time.perf_counter()
        state.step()
        step_seconds += time.perf_counter() - tick
        steps_timed += 1
        it = state.iteration
        final = it == loop.iterations
        if it % loop.report_every and not final:
            continue
        metrics: dict[str, Any] = state.pop_window()
        metrics["iteration"] = it
        metrics["iterations_per_s"] = steps_timed / step_seconds
        step_seconds, steps_timed = 0.0, 0
        figure = None
        if final or it % loop.eval_every == 0:
            metrics.update(evaluate(state, loop))
            figure = Path(scratch_dir) / f"attention_{it:07d}.png"
            attention_figure(state, loop, figure)
        write = None
        if final or figure is not None or it % loop.checkpoint_every == 0:
            write = checkpoint_writer(state, metrics, figure, final)
        report(metrics, write)


def load_checkpoint(state, directory: Path) -> None:
    """Restore ``state`` from a checkpoint directory written by ``checkpoint_writer``."""
    path = Path(directory) / STATE_FILE
    try:
        state.load(path)
    except FileNotFoundError:
        raise StudyError(f"checkpoint {directory} has no {STATE_FILE}; it is not a checkpoint of this study") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise StudyError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it to fall back") from None
