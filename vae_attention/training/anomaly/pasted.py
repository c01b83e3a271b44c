"""MNIST localisation with masks: the anomaly evaluation's pass over the pasted copy of the inlier test digits.

MNIST has no pixel masks, so the paper's claim (i) ("the maps localise the anomaly") is judged by eye. The
pasted set (``vae_attention.data.pasted_mnist``: each inlier test digit with a stroke cut from an unseen
outlier digit, or a plain square, pasted in; the mask = exactly the pixels the paste changed) gives it a
number. This pass runs the run's own attention maps (same layer, score, activation, normalisation, model in
eval mode) over that set and logs, beside the clean set's ``image_auroc``:

- ``pixel_auroc_pasted``, ``best_iou_pasted`` (pooled; threshold chosen on this set, optimistic as elsewhere),
  ``best_iou_per_batch_pasted``, ``best_iou_seed_pasted`` (the report's macro bg/fg IoU per batch);
- ``pixel_auroc_pasted_stroke``: strokes only (the squares are the easy kind);
- ``baseline_intensity_pixel_auroc_pasted`` / ``baseline_intensity_best_iou_pasted`` (and ``_stroke``): the
  trivial map "pixel intensity of the pasted image". Pasted pixels are bright ink on a mostly black image, so
  any map that is high on ink scores well; a measurement on the scikit-learn fixture found intensity beating
  the attention maps on strokes, which is why it is logged beside them — the maps' figure means something
  only where it exceeds this baseline;
- ``baseline_pixel_auroc_pasted``: the reconstruction-error map, as ``baseline_pixel_auroc`` elsewhere.

The pasted set is built with ``PASTED_SEED`` for every trial (and every re-score), so all runs of a study are
scored on the same images; it honours ``eval_digits`` (the stroke pool's digits) and ``max_test_images``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING

from torch.utils.data import Subset

from vae_attention.data.pasted_mnist import STROKE, PastedMNIST
from vae_attention.metrics.seed_iou import best_iou_seed

if TYPE_CHECKING:
    from vae_attention.training.anomaly.state import AnomalyState

PASTED_SEED = 0  # one pasted set per (data, digit, pool digits): the same images for every trial and seed


@functools.lru_cache(maxsize=4)
def pasted_set(data_dir: str, digit: int, eval_digits: tuple[int, ...]) -> PastedMNIST:
    """The pasted copy of ``digit``'s test images (built once per process: it reads both MNIST splits)."""
    return PastedMNIST(data_dir, digit, eval_digits or None, seed=PASTED_SEED)


def pasted_metrics(state: AnomalyState) -> dict[str, float]:
    """The metrics above for an MNIST run (model put in eval mode for the pass, then restored); {} otherwise."""
    # imported here: evaluate imports this module's caller; the helpers live there and are shared, not copied
    from vae_attention.training.anomaly.evaluate import collect, pixel_metrics

    cfg = state.config
    if cfg.dataset != "mnist" or cfg.data_dir is None:
        return {}
    full = pasted_set(str(cfg.data_dir), int(cfg.digit), tuple(cfg.eval_digits))
    n = min(len(full), cfg.max_test_images) if cfg.max_test_images else len(full)
    view = SimpleNamespace(config=cfg, test_set=Subset(full, range(n)) if n < len(full) else full,
                           model=state.model, device=state.device, train_set=state.train_set)
    was_training = state.model.training
    state.model.eval()
    try:
        data = collect(view, [cfg.resolved_layer])
    finally:
        state.model.train(was_training)
    maps, masks, batches = data.maps[cfg.resolved_layer], data.masks, data.batches
    intensity = full.images[:n, 0].clone()
    stroke = full.kinds[:n] == STROKE
    metrics: dict[str, float] = {}
    main = pixel_metrics(maps, masks, batches, cfg.num_bins)
    metrics.update(pixel_auroc_pasted=float(main["pixel_auroc"]), best_iou_pasted=float(main["best_iou"]),
                   best_iou_per_batch_pasted=float(main["best_iou_per_batch"]))
    seed_iou, _ = best_iou_seed([maps[part] for part in batches], [masks[part] for part in batches])
    metrics["best_iou_seed_pasted"] = float(seed_iou)
    base = pixel_metrics(intensity, masks, batches, cfg.num_bins)
    metrics.update(baseline_intensity_pixel_auroc_pasted=float(base["pixel_auroc"]),
                   baseline_intensity_best_iou_pasted=float(base["best_iou"]))
    recon = pixel_metrics(data.baseline, masks, batches, cfg.num_bins)
    metrics["baseline_pixel_auroc_pasted"] = float(recon["pixel_auroc"])
    if stroke.any():
        whole = [slice(0, int(stroke.sum()))]
        only = pixel_metrics(maps[stroke], masks[stroke], whole, cfg.num_bins)
        ink = pixel_metrics(intensity[stroke], masks[stroke], whole, cfg.num_bins)
        metrics.update(pixel_auroc_pasted_stroke=float(only["pixel_auroc"]),
                       baseline_intensity_pixel_auroc_pasted_stroke=float(ink["pixel_auroc"]))
    return metrics

