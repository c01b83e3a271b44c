"""The reproducibility report's best IoU (``best_iou_seed``), defined exactly as the report's code computed it.

Source: Carmoondedraak/FACT-2021, ``expVAE_pl/exp_vae_pl.py``: ``ExpVAE.test_epoch_end`` (threshold choice,
per-batch IoU, best over thresholds) and ``ExpVAE.gen_bloc_map`` (binarisation), run with PyTorch Lightning
1.1.x (``expVAE_pl/requirements.txt`` pins 1.1.5), whose ``pytorch_lightning.metrics.ROC`` gives the thresholds
(``metrics/functional/roc.py``: ``_roc_compute`` over ``_binary_clf_curve``) and whose
``pytorch_lightning.metrics.functional.classification.iou`` scores each batch. It is *not* the paper's IoU
(``vae_attention.metrics.pixel.best_iou``: the foreground Jaccard index of one confusion matrix pooled over the
test set); it is the **macro mean over the classes {background, anomaly}** per batch, averaged over batches,
which is why the report's IoUs sit near 0.5 (the background IoU of sparse anomaly masks is close to 1): at the
first threshold nothing is predicted, and a batch whose masks mark a fraction a_b of its pixels scores
(1 − a_b) / 2, so even uninformative maps reach about 0.5 − mean(a_b) / 2.

Definition (``maps``: the per-pixel scores of the test batches b = 1..n_B, ``masks`` their {0, 1} labels):

1. Thresholds (PL 1.1 ``ROC`` on all pixels pooled, flattened): the distinct score values in descending order,
   preceded by ``max + 1``; L = #distinct + 1 values. The report sorts them by FPR (``torch.sort``, ascending)
   and keeps every ``step``-th, ``step = int(L / 100)``, starting with the first: ceil(L / step) thresholds,
   between 100 and 199 once L >= 100. FPR is non-decreasing along descending thresholds, so the sorted order
   is the descending order up to ties in FPR; ``torch.sort`` is not stable, so within a run of tied FPRs the
   report's subsample could pick other members of the tie. Here the descending order is kept (what a stable
   sort gives). For L < 100 the report's code fails (slice step 0); here every threshold is used.
2. Binarisation (``gen_bloc_map``): a pixel is predicted anomalous iff ``score > t`` (strict; the ROC's own
   convention is ``>=``). The first threshold, max + 1, predicts no pixel.
3. Per-batch score (PL 1.1 ``iou`` with its defaults ``absent_score=0``, ``reduction='elementwise_mean'``):
   the number of classes C is inferred per call as ``max(pred.max(), target.max()) + 1``. With TP, FP, FN, TN
   counted over the batch's pixels:

   * C = 1 (no anomalous pixel in the masks and none predicted): the score is the background IoU, 1.0.
   * C = 2: the mean of IoU_anomaly = TP / (TP + FP + FN) and IoU_background = TN / (TN + FN + FP); a class
     absent from both target and prediction scores ``absent_score`` = 0 instead, which can only happen to the
     background, when every pixel of the batch is anomalous in mask and prediction (score (0 + 1) / 2).

   This equals ``sklearn.metrics.jaccard_score(mask, pred, average="macro")`` (labels inferred from the data)
   on every batch except that all-anomalous corner, where scikit-learn scores 1.0.
4. ``mean_iou(t)`` = the unweighted mean over batches (``np.mean`` of the per-batch list): a short last batch
   weighs as much as a full one, so the number depends on batch size and order.
5. ``best_iou_seed`` = max_t ``mean_iou(t)``, scanned in the report's order (descending t) with a strict ``>``
   from an initial (0, -1): the *highest* threshold attaining the max is returned, and (0.0, -1.0) if no
   threshold beats 0. Like the paper's figure, it is chosen on the test set (optimistic).

Numerics: PL 1.1 counted pixels in float32 (exact below 2^24 pixels per batch) and divided in float32; here
counts are int64 and ratios float64, so values agree with the report's to ~1e-7. Scores are compared in
float64 (float32 maps convert exactly; max + 1 is formed in float64).

What the report's pipeline adds outside this function (facts for the "what differs" table): the maps are the
authors' |·| of the bilinearly upsampled CAM with gradients divided by the batch-wide RMS (so a pixel's score
depends on its batch-mates); the test set holds only defective MVTec images / the UCSD frames that have masks;
the maps are recomputed for every threshold (identical for ``mean_sum``, re-sampled for ``normal_diff``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from vae_attention.errors import ConfigError

__all__ = ["best_iou_seed", "lightning_iou", "seed_iou_curve", "seed_roc_thresholds"]

# The report divides the ROC's thresholds into "100 equally separated" ones (exp_vae_pl.py, test_epoch_end).
SEED_NUM_THRESHOLDS = 100


def _as_flat(x: Any, name: str) -> np.ndarray:
    """One batch as a flat numpy array; (B, 1, H, W) and (B, H, W) flatten alike (PL's ROC flattens too)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x).reshape(-1)
    if a.size == 0:
        raise ConfigError(f"{name}: empty batch (PL's iou takes the max of the batch and fails on it)")
    return a


def _scores(x: Any, name: str) -> np.ndarray:
    s = _as_flat(x, name)
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise ConfigError(f"{name} must hold real scores, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ConfigError(f"{name} holds NaN scores; the maps must be finite")
    return s


def _labels(x: Any, name: str) -> np.ndarray:
    m = _as_flat(x, name)
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
        raise ConfigError(f"{name} must hold 0/1 mask values (the report binarises its masks at 0.5 first)")
    return m.astype(bool)


def _paired_batches(maps: Iterable[Any], masks: Iterable[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = []
    maps, masks = list(maps), list(masks)
    if len(maps) != len(masks):
        raise ConfigError(f"{len(maps)} map batches but {len(masks)} mask batches")
    if not maps:
        raise ConfigError("no test batches given")
    for b, (s, m) in enumerate(zip(maps, masks, strict=True)):
        s, m = _scores(s, f"maps[{b}]"), _labels(m, f"masks[{b}]")
        if s.shape != m.shape:
            raise ConfigError(f"maps[{b}] has {s.size} pixels but masks[{b}] has {m.size}")
        batches.append((s, m))
    return batches


def seed_roc_thresholds(maps: Iterable[Any], num_thresholds: int = SEED_NUM_THRESHOLDS) -> np.ndarray:
    """The report's IoU thresholds (step 1 of the module docstring), float64, in descending order.

    ``maps``: the test batches' score maps (any shapes; all pixels pooled). PL's ROC thresholds do not depend
    on the masks: they are the distinct scores plus max + 1; the masks only reorder tied FPRs (see above).
    """
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 1:
        raise ConfigError(f"num_thresholds must be a positive integer, got {num_thresholds!r}")
    pooled = [_scores(s, f"maps[{b}]") for b, s in enumerate(maps)]
    if not pooled:
        raise ConfigError("no test batches given")
    distinct = np.unique(np.concatenate(pooled))[::-1]  # descending, as _binary_clf_curve's preds[threshold_idxs]
    thresholds = np.concatenate(([distinct[0] + 1.0], distinct))
    step = max(1, len(thresholds) // int(num_thresholds))  # the report: int(len / 100); 0 would fail there
    return thresholds[::step].copy()


def lightning_iou(pred: Any, target: Any) -> float:
    """PyTorch Lightning 1.1's ``iou(pred, target)`` for binary labels, with its defaults (step 3 above).

    ``pred`` and ``target``: arrays of {0, 1} (any matching shapes). Source:
    ``pytorch_lightning/metrics/functional/classification.py`` (v1.1.x): ``get_num_classes`` infers C from the
    max label, ``stat_scores_multiple_classes`` counts per class, ``absent_score=0`` for a class absent from
    both, and ``reduce(..., 'elementwise_mean')`` averages over classes.
    """
    p, y = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != y.shape:
        raise ConfigError(f"pred has {p.size} pixels but target has {y.size}")
    tp = int(np.count_nonzero(p & y))
    fp = int(np.count_nonzero(p & ~y))
    fn = int(np.count_nonzero(~p & y))
    tn = p.size - tp - fp - fn
    return float(_macro_iou(np.array([tp]), np.array([fp]), np.array([fn]), np.array([tn]))[0])


def _macro_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Vectorised PL 1.1 binary ``iou`` from int64 counts (one entry per threshold)."""
    two_classes = (tp + fn > 0) | (tp + fp > 0)  # an anomalous pixel in the target or the prediction
    union_fg = np.maximum(tp + fp + fn, 1)
    iou_fg = tp / union_fg
    # Background: its TP is TN, its FP is FN, its FN is FP, its support TN + FP.
    bg_absent = (tn + fp) + tn + fn == 0
    iou_bg = np.where(bg_absent, 0.0, tn / np.maximum(tn + fn + fp, 1))
    return np.where(two_classes, 0.5 * (iou_fg + iou_bg), 1.0)  # C = 1: background only, TN / TN = 1


def seed_iou_curve(maps: Iterable[Any], masks: Iterable[Any], thresholds: Sequence[float]) -> np.ndarray:
    """``mean_iou(t)`` for each threshold (steps 2–4): PL 1.1 ``iou`` per batch, unweighted mean over batches.

    ``maps``/``masks``: per-batch tensors or arrays (same number of pixels per pair); predicted = score > t.
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    total = np.zeros(t.shape, dtype=np.float64)
    batches = _paired_batches(maps, masks)
    for s, m in batches:
        pos, neg = np.sort(s[m]), np.sort(s[~m])
        # #{s > t} = n - #{s <= t}
        tp = pos.size - np.searchsorted(pos, t, side="right")
        fp = neg.size - np.searchsorted(neg, t, side="right")
        fn, tn = pos.size - tp, neg.size - fp
        total += _macro_iou(tp, fp, fn, tn)
    return total / len(batches)


def best_iou_seed(
    maps: Iterable[Any], masks: Iterable[Any], num_thresholds: int = SEED_NUM_THRESHOLDS
) -> tuple[float, float]:
    """(best mean per-batch macro IoU, its threshold): the report's ``best_iou``/``best_threshold``.

    ``maps``/``masks``: the test set as a sequence of batches, each (B, H, W) or (B, 1, H, W) scores and
    {0, 1} masks, in the loader's order (the mean over batches is unweighted). See the module docstring for
    the definition and its source; ties go to the highest threshold, and (0.0, -1.0) is returned if no
    threshold scores above 0, as the report's loop does.
    """
    maps, masks = list(maps), list(masks)
    thresholds = seed_roc_thresholds(maps, num_thresholds)
    curve = seed_iou_curve(maps, masks, thresholds)
    j = int(np.argmax(curve))  # first maximum = highest threshold, the report's strict ">" in descending order
    if not curve[j] > 0.0:
        return 0.0, -1.0
    return float(curve[j]), float(thresholds[j])
