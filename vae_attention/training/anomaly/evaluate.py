"""Evaluation of an anomaly run: attention and reconstruction-error maps over the test set, then metrics.

Maps are computed once per evaluation (model in eval mode: BatchNorm uses running statistics, so each
image's map is its own) and kept on CPU in float32, one set per layer plus the reconstruction-error maps;
masks as uint8; input images only for the figure. That is ~0.5 MB per 256² MVTec image (a category has
≤ 200 test images) and ~0.2 MB per UCSD frame (≈ 0.4 GB for the clips with masks, ≈ 1.4 GB with
``gt_policy=all_clips``). The pixel accumulators then see globally comparable scores over a score range
known from the cached maps.

Metrics (``step`` = epoch): ``pixel_auroc``, ``best_iou``, ``best_threshold`` (chosen on the test set, as
the paper and the report did: optimistic), ``best_iou_per_batch`` (IoU averaged over test batches, the
reduction the report suspected), MVTec's ``*_no_good`` (defective test images only), the reconstruction
baseline ``baseline_pixel_auroc``/``baseline_best_iou``, UCSD's ``pixel_auroc/<layer>`` for every conv the
report compared, and for MNIST (no masks) ``image_auroc``: inlier vs outlier digits by mean attention.
With masks also ``best_iou_seed``/``best_threshold_seed``: the report's IoU (macro mean over {background,
anomaly} per test batch, averaged over batches, at ~100 ROC thresholds; ``vae_attention.metrics.seed_iou``) on
the same cached maps and the evaluation's test batches (``batch_size`` images each, test-set order).

``score="normal_diff"``: the maps of the paper's normal-difference score (Eqs. 3–4,
``vae_attention.anomaly_scores.normal_difference_score``, u = 0), with the inlier statistics (mean and
variance of μ) recomputed at every evaluation over the training set in eval mode, without augmentation.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset, Subset

from vae_attention.anomaly_scores import inlier_statistics, normal_difference_score
from vae_attention.attention import ScoreFn, attention_maps
from vae_attention.figures import anomaly_grid_figure
from vae_attention.metrics import PixelScoreAccumulator
from vae_attention.metrics.seed_iou import best_iou_seed
from vae_attention.models import UCSD_ATTENTION_LAYERS
from vae_attention.training.anomaly.objective import reconstruction

if TYPE_CHECKING:
    from vae_attention.training.anomaly.state import AnomalyState


def _maps(state: AnomalyState, x: torch.Tensor, layer: str, score_fn: ScoreFn | None = None) -> torch.Tensor:
    cfg = state.config
    score = "sum" if score_fn is not None else cfg.resolved_score  # score is unused when score_fn is given
    return attention_maps(state.model, x, layer, score=score, activation=cfg.resolved_activation,
                          normalize_grads=cfg.normalize_grads, size=tuple(x.shape[-2:]),
                          upsample_first=cfg.resolved_upsample_first, score_fn=score_fn)


@contextmanager
def _without_augmentation(dataset: Dataset):
    """Read ``dataset`` (or the set a ``Subset`` wraps) with its ``augment`` switched off, and no generator draws."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    saved = getattr(base, "augment", None)
    if saved:
        base.augment = False
    try:
        yield dataset
    finally:
        if saved:
            base.augment = saved


def normal_diff_score_fn(state: AnomalyState) -> ScoreFn:
    """The normal-difference score with (m, v) = ``inlier_statistics`` of μ over the training set (eval mode)."""
    cfg = state.config
    with _without_augmentation(state.train_set) as train, torch.no_grad():
        loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
        mean, var = inlier_statistics(state.model.encode(batch["image"].to(state.device))[0] for batch in loader)
    return functools.partial(normal_difference_score, inlier_mean=mean, inlier_var=var)


@dataclass(frozen=True)
class Collected:
    """One pass over the test set, in test-set order, on CPU."""

    maps: dict[str, torch.Tensor]  # layer -> (N, H, W) float32 attention maps
    baseline: torch.Tensor  # (N, H, W) reconstruction-error maps: mean over channels of |x - sigmoid(logits)|
    labels: torch.Tensor  # (N,) 1 = anomalous image
    masks: torch.Tensor | None  # (N, H, W) uint8 pixel masks; None for test sets without masks (MNIST)
    batches: list[slice]  # the test batches as index ranges (per-batch IoU)
    figure_index: torch.Tensor  # test-set indices of the figure's images
    figure_images: torch.Tensor  # (n, C, H, W) their inputs


def collect(state: AnomalyState, layers: list[str]) -> Collected:
    """Per test image: labels, masks, attention maps per layer and recon-error maps, plus the inputs of the
    figure's images (the first defective ones, else the first ones)."""
    cfg = state.config
    score_fn = normal_diff_score_fn(state) if cfg.resolved_score == "normal_diff" else None
    loader = DataLoader(state.test_set, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    maps: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    baseline, masks, labels, batches = [], [], [], []
    figure: dict[str, list] = {"defective": [], "any": []}
    figure_inputs: dict[int, torch.Tensor] = {}
    start = 0
    for batch in loader:
        x = batch["image"].to(state.device)
        for layer in layers:
            maps[layer].append(_maps(state, x, layer, score_fn).cpu())
        with torch.no_grad():
            recon = reconstruction(cfg, state.model(x).recon_logits)
        baseline.append((x - recon).abs().mean(dim=1).cpu())
        if "mask" in batch:
            masks.append(batch["mask"][:, 0].to(torch.uint8))
        # UCSD frames carry no label: a frame is anomalous when its mask has any anomalous pixel
        label = batch["label"] if "label" in batch else (batch["mask"].flatten(1).amax(1) > 0).long()
        label = torch.as_tensor(label)
        labels.append(label)
        for i in range(x.shape[0]):
            for kind in ("defective", "any") if label[i] == 1 else ("any",):
                if len(figure[kind]) < cfg.figure_images:
                    figure[kind].append(start + i)
                    figure_inputs[start + i] = x[i].cpu()
        batches.append(slice(start, start + x.shape[0]))
        start += x.shape[0]
    chosen = figure["defective"] or figure["any"]
    return Collected(
        maps={layer: torch.cat(parts) for layer, parts in maps.items()},
        baseline=torch.cat(baseline),
        labels=torch.cat(labels),
        masks=torch.cat(masks) if masks else None,
        batches=batches,
        figure_index=torch.as_tensor(chosen),
        figure_images=torch.stack([figure_inputs[i] for i in chosen]),
    )


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, batches: list[slice], num_bins: int) -> dict:
    """Pooled and per-batch pixel metrics of cached maps, binned over their own global score range."""
    lo, hi = float(maps.min()), float(maps.max())
    accumulator = PixelScoreAccumulator(num_bins=num_bins, score_range=(lo, hi if hi > lo else lo + 1.0))
    for part in batches:
        accumulator.update(maps[part], masks[part])
    return accumulator.compute()


def evaluate(state: AnomalyState, figure_path: Path) -> tuple[dict[str, float], Path]:
    cfg = state.config
    layers = [cfg.resolved_layer]
    if cfg.dataset == "ucsd":
        layers += [layer for layer in UCSD_ATTENTION_LAYERS if layer != cfg.resolved_layer]
    state.model.eval()
    try:
        data = collect(state, layers)
    finally:
        state.model.train()
    maps = data.maps[cfg.resolved_layer]
    labels = data.labels.numpy()
    metrics: dict[str, float] = {}
    threshold = None
    if cfg.dataset == "mnist":
        if 0 < labels.sum() < len(labels):
            metrics["image_auroc"] = float(roc_auc_score(labels, maps.flatten(1).mean(1).numpy()))
            metrics["baseline_image_auroc"] = float(roc_auc_score(labels, data.baseline.flatten(1).mean(1).numpy()))
        from vae_attention.training.anomaly.pasted import pasted_metrics  # here: pasted.py imports this module

        metrics.update(pasted_metrics(state))  # pixel metrics on the pasted copy (issue 11)
    else:
        masks, batches = data.masks, data.batches
        main = pixel_metrics(maps, masks, batches, cfg.num_bins)
        threshold = main["best_threshold"]
        metrics.update({k: float(main[k]) for k in ("pixel_auroc", "best_iou", "best_threshold",
                                                     "best_iou_per_batch")})
        seed_iou, seed_threshold = best_iou_seed([maps[part] for part in batches], [masks[part] for part in batches])
        metrics.update(best_iou_seed=seed_iou, best_threshold_seed=seed_threshold)
        base = pixel_metrics(data.baseline, masks, batches, cfg.num_bins)
        metrics.update(baseline_pixel_auroc=float(base["pixel_auroc"]), baseline_best_iou=float(base["best_iou"]))
        if cfg.dataset == "mvtec":
            defective = torch.as_tensor(labels == 1)
            if defective.any():
                only = pixel_metrics(maps[defective], masks[defective], [slice(0, int(defective.sum()))],
                                     cfg.num_bins)
                metrics.update(pixel_auroc_no_good=float(only["pixel_auroc"]),
                               best_iou_no_good=float(only["best_iou"]))
        for layer in layers[1:]:
            other = pixel_metrics(data.maps[layer], masks, batches, cfg.num_bins)
            metrics[f"pixel_auroc/{layer}"] = float(other["pixel_auroc"])
        if cfg.dataset == "ucsd":
            metrics[f"pixel_auroc/{cfg.resolved_layer}"] = metrics["pixel_auroc"]
    index = data.figure_index
    title = (f"{cfg.dataset} {cfg.category if cfg.dataset == 'mvtec' else ''} layer {cfg.resolved_layer} "
             f"({cfg.attention}) epoch {state.epoch}")
    images = (data.figure_images + 1.0) / 2.0 if cfg.input_low < 0 else data.figure_images  # shown in [0, 1]
    anomaly_grid_figure(images, data.masks[index] if data.masks is not None else None,
                        maps[index], threshold, title=title, path=figure_path, score_range=(float(maps.min()),
                                                                                             float(maps.max())))
    return metrics, figure_path
