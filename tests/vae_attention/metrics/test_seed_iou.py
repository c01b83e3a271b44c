"""Known-answer tests of ``best_iou_seed``: the report's per-batch macro IoU at ROC-derived thresholds.

Oracles: scikit-learn's ``jaccard_score(average="macro")`` per batch (labels inferred from the data, as PyTorch
Lightning 1.1 inferred its number of classes), averaged over batches with plain numpy; thresholds written out
by hand from the definition (distinct scores descending, preceded by max + 1, every ``int(L / 100)``-th).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from vae_attention.errors import ConfigError
from vae_attention.metrics.seed_iou import best_iou_seed, lightning_iou, seed_iou_curve, seed_roc_thresholds


def sklearn_mean_iou(maps, masks, threshold) -> float:
    """Mean over batches of sklearn's macro Jaccard of (mask, score > threshold), compared in float64."""
    per_batch = []
    for s, m in zip(maps, masks, strict=True):
        pred = np.asarray(s, dtype=np.float64).ravel() > threshold
        per_batch.append(jaccard_score(np.asarray(m).ravel().astype(int), pred.astype(int), average="macro"))
    return float(np.mean(per_batch))


def hand_batches(rng: np.random.Generator):
    """Three batches of unequal size: sparse blobs, one batch without any anomaly, ties in the scores."""
    maps, masks = [], []
    for size, with_anomaly in ((4, True), (3, False), (2, True)):  # a short last batch
        s = rng.integers(0, 20, size=(size, 1, 8, 8)).astype(np.float32) / 20  # ties: 20 levels
        m = np.zeros((size, 1, 8, 8), dtype=np.float32)
        if with_anomaly:
            m[:, :, 2:5, 3:6] = 1.0
            s[:, :, 2:5, 3:6] += 0.3  # anomalies score higher, with overlap
        maps.append(torch.from_numpy(s))
        masks.append(torch.from_numpy(m))
    return maps, masks


@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 0.7])
def test_lightning_iou_equals_sklearn_macro_jaccard(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(20):
        y = rng.random(50) < density
        p = rng.random(50) < rng.random()
        want = jaccard_score(y.astype(int), p.astype(int), average="macro")
        assert lightning_iou(p, y) == pytest.approx(want, abs=1e-12)


def test_lightning_iou_corner_cases():
    zeros, ones = np.zeros(6, dtype=bool), np.ones(6, dtype=bool)
    assert lightning_iou(zeros, zeros) == 1.0  # one class inferred: background IoU only (sklearn agrees)
    assert jaccard_score(zeros.astype(int), zeros.astype(int), average="macro") == 1.0
    # Everything anomalous in mask and prediction: PL keeps 2 classes, background absent -> absent_score 0.
    assert lightning_iou(ones, ones) == 0.5
    # One of 4 pixels anomalous and found, plus one false positive: fg 1/2, bg 2/3.
    assert lightning_iou([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_curve_equals_sklearn_per_batch_mean_at_given_thresholds():
    maps, masks = hand_batches(np.random.default_rng(0))
    thresholds = [-1.0, 0.0, 0.1, 0.3, 0.45, 0.5, 0.95, 1.25, 2.0]
    curve = seed_iou_curve(maps, masks, thresholds)
    for t, got in zip(thresholds, curve, strict=True):
        assert got == pytest.approx(sklearn_mean_iou(maps, masks, t), abs=1e-12)


def test_best_iou_seed_equals_brute_force_over_the_report_thresholds():
    maps, masks = hand_batches(np.random.default_rng(1))
    thresholds = seed_roc_thresholds(maps)
    distinct = np.unique(np.concatenate([m.numpy().ravel() for m in maps]).astype(np.float64))[::-1]
    assert len(distinct) + 1 < 100  # few levels: the report's step would be 0, every threshold is used
    np.testing.assert_array_equal(thresholds, np.concatenate(([distinct[0] + 1], distinct)))
    oracle = [sklearn_mean_iou(maps, masks, t) for t in thresholds]
    best, best_t = best_iou_seed(maps, masks)
    j = int(np.argmax(oracle))  # first maximum in descending-threshold order
    assert best == pytest.approx(oracle[j], abs=1e-12)
    assert best_t == thresholds[j]


def test_threshold_choice_hand_case_strict_greater():
    # Scores 0.9, 0.8 on the anomaly, 0.2, 0.1 on the background; thresholds 1.9, 0.9, 0.8, 0.2, 0.1.
    # Predicted = score > t: at t = 0.2 the prediction is perfect (1.0); at 0.8 fg 1/2, bg 2/3; at 0.1 fg 2/3,
    # bg 1/2; at 1.9 and 0.9 nothing is predicted: fg 0, bg 2/4. The best threshold is the *lower* edge 0.2.
    maps = [torch.tensor([[[0.9, 0.8], [0.2, 0.1]]], dtype=torch.float64)]
    masks = [torch.tensor([[[1, 1], [0, 0]]])]
    np.testing.assert_allclose(seed_roc_thresholds(maps), [1.9, 0.9, 0.8, 0.2, 0.1])
    curve = seed_iou_curve(maps, masks, seed_roc_thresholds(maps))
    np.testing.assert_allclose(curve, [0.25, 0.25, (1 / 2 + 2 / 3) / 2, 1.0, (2 / 3 + 1 / 2) / 2])
    assert best_iou_seed(maps, masks) == (1.0, 0.2)


def test_ties_go_to_the_highest_threshold():
    # No anomalous pixel: predicting nothing scores 1.0, at both max + 1 and max; the report keeps the first.
    maps, masks = [torch.tensor([[0.3, 0.7]])], [torch.tensor([[0, 0]])]
    assert best_iou_seed(maps, masks) == (1.0, pytest.approx(1.7))


def test_subsampling_keeps_every_int_L_over_100th_threshold():
    maps = [torch.arange(250, dtype=torch.float32).reshape(5, 50)]
    thresholds = seed_roc_thresholds(maps)  # L = 251 -> step 2 -> 126 thresholds
    np.testing.assert_array_equal(thresholds, np.concatenate(([250.0], np.arange(248.0, -1.0, -2.0))))
    assert len(seed_roc_thresholds(maps, num_thresholds=50)) == math.ceil(251 / 5)


def test_shapes_and_batch_weighting():
    maps, masks = hand_batches(np.random.default_rng(2))
    squeezed = best_iou_seed([m[:, 0] for m in maps], [m[:, 0] for m in masks])
    assert squeezed == best_iou_seed(maps, masks)
    # The mean is over batches, not pixels: merging the batches changes the number.
    merged = best_iou_seed([torch.cat(maps)], [torch.cat(masks)])
    assert merged != squeezed


def test_background_iou_lifts_the_seed_value_above_the_pooled_foreground_iou():
    from vae_attention.metrics.pixel import best_iou

    maps, masks = hand_batches(np.random.default_rng(3))
    pooled, _ = best_iou(torch.cat(maps), torch.cat(masks), num_bins=64)
    seed, _ = best_iou_seed(maps, masks)
    assert seed > pooled and seed > 0.5


def test_uninformative_maps_score_about_one_half():
    # Predicting nothing (threshold max + 1) scores (0 + (1 - a_b)) / 2 per batch, a_b = anomalous fraction.
    g = torch.Generator().manual_seed(4)
    masks = [(torch.rand(4, 16, 16, generator=g) < 0.05).float() for _ in range(3)]
    maps = [torch.rand(4, 16, 16, generator=g) for _ in range(3)]
    floor = float(np.mean([(1 - m.mean().item()) / 2 for m in masks]))
    assert seed_iou_curve(maps, masks, [2.0])[0] == pytest.approx(floor, abs=1e-12)
    best, _ = best_iou_seed(maps, masks)
    assert floor <= best < 0.5


@pytest.mark.parametrize(
    "maps, masks",
    [
        ([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)]),  # batch counts differ
        ([torch.zeros(1, 2, 2)], [torch.full((1, 2, 2), 0.5)]),  # non-binary mask
        ([torch.full((1, 2, 2), math.nan)], [torch.zeros(1, 2, 2)]),  # NaN score
        ([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 3)]),  # pixel counts differ
        ([], []),
    ],
)
def test_invalid_input_is_refused(maps, masks):
    with pytest.raises(ConfigError):
        best_iou_seed(maps, masks)
