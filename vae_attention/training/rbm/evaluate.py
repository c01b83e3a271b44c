"""Evaluation of an RBM run: both RBM attention constructions and the VAE's map on the same test images.

Maps (each (B, 28, 28), one per image, computed in test-set order in batches of ``batch_size``):

* ``gradcam`` — ``rbm_attention.gradcam_map`` of layer ``rbm_layer`` (τ, samples, straight-through, activation
  from the config);
* ``seed`` — ``rbm_attention.seed_map``, the report's construction (its batch-wide RMS step couples the images of a
  batch, as in the report; the batch size is the training batch size, the report's 64);
* ``vae`` — the anomaly study's MNIST VAE map, computed by that study's own evaluation code (its default
  ``authors`` mode: |upsampled grad-weighted map of Σμ| at ``encoder.2``), model in eval mode;
* ``input`` — the image itself: a reference, because the pasted pixels are bright ink on a dark image and pooled
  pixel AUROC rewards any map that is high on ink (``vae_attention.data.pasted_mnist``).

Noise: every evaluation draws the relaxed samples from a fresh generator seeded by ``config.seed``, so an
evaluation neither depends on nor disturbs the training streams (a resumed run evaluates identically).

Metrics, each as ``<metric>/<map>`` and, for the configured ``rbm_map``, also unsuffixed:
``pixel_auroc``, ``best_iou`` (pooled foreground IoU), ``best_threshold``, ``best_iou_per_batch``
(``metrics.pixel``, binned over the maps' own range) and ``best_iou_seed`` (the report's macro IoU per batch,
``metrics.seed_iou``) on the pasted test set; ``image_auroc``: inlier vs outlier-digit test images scored by
their mean map. Figure: per pasted image, the input, its mask and each map over the input (one colour scale
per map kind, shared by the images, as the pooled metrics compare them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from vae_attention.metrics import PixelScoreAccumulator, best_iou_seed
from vae_attention.rbm_attention import gradcam_map, seed_map
from vae_attention.training.anomaly.evaluate import _maps as anomaly_maps

if TYPE_CHECKING:
    from vae_attention.training.rbm.state import RBMState

MAP_KINDS = ("gradcam", "seed", "vae", "input")
PIXEL_KEYS = ("pixel_auroc", "best_iou", "best_threshold", "best_iou_per_batch")
MapFn = Callable[[torch.Tensor], torch.Tensor]


def map_functions(state: RBMState, generator: torch.Generator) -> dict[str, MapFn]:
    """Image batch (B, 1, 28, 28) → (B, 28, 28) maps, per kind."""
    cfg, stack, layer = state.config, state.stack, state.config.map_layer

    def gradcam(x):
        return gradcam_map(stack, x, layer, temperature=cfg.temperature, n_samples=cfg.n_samples,
                           straight_through=cfg.straight_through, activation=cfg.map_activation,
                           generator=generator)[:, 0]

    def seed(x):
        return seed_map(stack, x, layer, temperature=cfg.temperature, generator=generator)[:, 0]

    def vae_map(x):
        # the anomaly study's own map of its config (layer, score, activation, order), so the VAE column is
        # exactly what `python -m study.run anomaly --dataset mnist` evaluates
        return anomaly_maps(state.vae, x, state.vae.config.resolved_layer)

    return {"gradcam": gradcam, "seed": seed, "vae": vae_map, "input": lambda x: x[:, 0].clone()}


def _collect(state: RBMState, dataset, fns: dict[str, MapFn], key: str) -> tuple[dict[str, list], list]:
    """Per kind, the maps of every batch (CPU float32), and each batch's ``key`` field (masks or labels)."""
    loader = DataLoader(dataset, batch_size=state.config.batch_size, shuffle=False, num_workers=0)
    maps: dict[str, list] = {kind: [] for kind in fns}
    extra = []
    for batch in loader:
        x = batch["image"].to(state.device)
        for kind, fn in fns.items():
            maps[kind].append(fn(x).detach().float().cpu())
        extra.append(batch[key][:, 0].to(torch.uint8) if key == "mask" else torch.as_tensor(batch[key]))
    return maps, extra


def pixel_metrics(batches: list[torch.Tensor], masks: list[torch.Tensor], num_bins: int) -> dict[str, float]:
    """Pooled and per-batch pixel metrics binned over the maps' own range, and the report's IoU."""
    lo = min(float(b.min()) for b in batches)
    hi = max(float(b.max()) for b in batches)
    accumulator = PixelScoreAccumulator(num_bins=num_bins, score_range=(lo, hi if hi > lo else lo + 1.0))
    for part, mask in zip(batches, masks, strict=True):
        accumulator.update(part, mask)
    result = accumulator.compute()
    metrics = {k: float(result[k]) for k in PIXEL_KEYS}
    metrics["best_iou_seed"] = best_iou_seed(batches, masks)[0]
    return metrics


def image_auroc(batches: list[torch.Tensor], labels: list[torch.Tensor]) -> float | None:
    y = torch.cat(labels).numpy()
    if not 0 < y.sum() < len(y):
        return None
    return float(roc_auc_score(y, torch.cat(batches).flatten(1).mean(1).numpy()))


def evaluate(state: RBMState, figure_path: Path) -> tuple[dict[str, float], Path]:
    cfg = state.config
    generator = torch.Generator(device=state.device).manual_seed(cfg.seed)
    fns = map_functions(state, generator)
    state.vae.model.eval()
    try:
        pasted, masks = _collect(state, state.data.pasted, fns, "mask")
        clean, labels = _collect(state, state.data.test, fns, "label")
    finally:
        state.vae.model.train()
    metrics: dict[str, float] = {}
    for kind in MAP_KINDS:
        values = pixel_metrics(pasted[kind], masks, cfg.num_bins)
        auroc = image_auroc(clean[kind], labels)
        if auroc is not None:
            values["image_auroc"] = auroc
        metrics.update({f"{name}/{kind}": value for name, value in values.items()})
        if kind == cfg.rbm_map:
            metrics.update(values)
    n = cfg.figure_images
    images = torch.cat([state.data.pasted[i]["image"][None] for i in range(min(n, len(state.data.pasted)))])
    shown = {kind: torch.cat(pasted[kind])[: len(images)] for kind in ("gradcam", "seed", "vae")}
    comparison_figure(images, torch.cat(masks)[: len(images)], shown,
                      title=f"digit {cfg.digit}, layer {cfg.map_layer} of {'-'.join(map(str, cfg.sizes))}, "
                            f"τ={cfg.temperature:g}, epoch {state.epoch}", path=figure_path)
    return metrics, figure_path


def comparison_figure(images: torch.Tensor, masks: torch.Tensor, maps: dict[str, torch.Tensor], title: str,
                      path: Path) -> Path:
    """Rows: input, mask, then each map kind in jet over the grey input; one column per image.

    Each kind has one colour scale (its min and max over the shown images), so columns compare as the pooled
    metrics compare them; the range is printed in the row label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["input", "mask", *maps]
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.5 * n, 1.5 * len(rows)), squeeze=False)
    for col in range(n):
        img = images[col, 0].numpy()
        axes[0, col].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[1, col].imshow(masks[col].numpy(), cmap="gray", vmin=0, vmax=1)
        for row, values in enumerate(maps.values(), start=2):
            lo, hi = float(values.min()), float(values.max())
            axes[row, col].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[row, col].imshow(values[col].numpy(), cmap="jet", alpha=0.55, vmin=lo, vmax=hi if hi > lo else lo + 1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, kind in enumerate(rows):
        label = kind
        if kind in maps:
            lo, hi = float(maps[kind].min()) + 0.0, float(maps[kind].max()) + 0.0  # + 0.0: no "-0" label
            label = f"{kind}\n[{lo:.3g}, {hi:.3g}]"
        axes[row, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
