"""Known-answer tests of the pooled pixel AUROC / best IoU accumulator.

Oracles: a brute-force numpy count of TP/FP at every edge threshold straight from the raw pixels (the same
edges, thresholded with ``s >= t``), ``sklearn.metrics.roc_auc_score``, and analytic cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vae_attention.errors import ConfigError
from vae_attention.metrics import PixelScoreAccumulator, best_iou, pixel_auroc
from vae_attention.metrics.pixel import score_range_from


def brute_counts(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray):
    """TP_j, FP_j by direct comparison; threshold 0 predicts every pixel (clipping of scores below lo)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    tp = np.empty(len(thresholds), dtype=np.int64)
    fp = np.empty(len(thresholds), dtype=np.int64)
    for j, t in enumerate(thresholds):
        pred = np.ones_like(y) if j == 0 else s >= t
        tp[j] = np.count_nonzero(pred & y)
        fp[j] = np.count_nonzero(pred & ~y)
    return tp, fp


def brute_metrics(tp, fp, p, n, thresholds):
    fpr = np.concatenate(([0.0], fp[::-1] / n))
    tpr = np.concatenate(([0.0], tp[::-1] / p))
    auroc = float(np.trapezoid(tpr, fpr))
    iou = tp / (tp + fp + (p - tp))
    j = int(np.argmax(iou))
    return auroc, float(iou[j]), float(thresholds[j])


def brute_per_batch(batches, thresholds):
    """max_j mean over batches (where defined) of that batch's IoU at t_j."""
    sums = np.zeros(len(thresholds))
    counts = np.zeros(len(thresholds), dtype=np.int64)
    for maps, masks in batches:
        tp, fp = brute_counts(maps.numpy(), masks.numpy(), thresholds)
        p = int(masks.sum())
        for j in range(len(thresholds)):
            union = tp[j] + fp[j] + (p - tp[j])
            if union:
                sums[j] += tp[j] / union
                counts[j] += 1
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    j = int(np.argmax(mean))
    return float(mean[j]), float(thresholds[j])


def random_batches(seed, sizes, hw=(64, 80), outside=True):
    """Batches of scores correlated with masks; some scores outside (-1, 1), some exactly on edges, +-inf."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in sizes:
        masks = torch.rand(b, *hw, generator=g) < 0.1
        maps = 0.6 * torch.randn(b, *hw, generator=g) + 0.8 * masks
        batches.append((maps, masks))
    if outside:
        maps = batches[0][0]
        maps.view(-1)[:5] = torch.tensor([math.inf, -math.inf, 5.0, -5.0, 1.0])
    return batches


def test_edges_are_equal_width_linspace():
    acc = PixelScoreAccumulator(num_bins=1000, score_range=(-2.5, 7.0))
    np.testing.assert_allclose(acc.thresholds, np.linspace(-2.5, 7.0, 1001)[:-1], rtol=0, atol=1e-13)
    assert acc.thresholds[0] == -2.5 and np.all(np.diff(acc.thresholds) > 0)


@pytest.mark.parametrize("num_bins", [1, 7, 200])
def test_equals_brute_force_over_same_edges(num_bins):
    batches = random_batches(0, [3, 5, 4, 2, 6])  # 20 x 64 x 80 = 102 400 pixels
    acc = PixelScoreAccumulator(num_bins=num_bins, score_range=(-1.0, 1.0))
    t = acc.thresholds
    # Put pixels exactly on edges (float32-representable ones) to pin the ">=" semantics.
    on_edge = torch.tensor(t, dtype=torch.float32).double().numpy() == t
    batches[1][0].view(-1)[: int(on_edge.sum())] = torch.tensor(t[on_edge], dtype=torch.float32)
    for maps, masks in batches:
        acc.update(maps, masks)

    scores = np.concatenate([m.numpy().ravel() for m, _ in batches])
    labels = np.concatenate([k.numpy().ravel() for _, k in batches])
    assert ((scores < -1) | (scores > 1)).mean() > 0.05  # clipping really exercised
    tp, fp = brute_counts(scores, labels, t)
    counts = acc.counts()
    np.testing.assert_array_equal(counts["tp"], tp)
    np.testing.assert_array_equal(counts["fp"], fp)

    p, n = int(labels.sum()), int((~labels).sum())
    auroc, iou, thr = brute_metrics(tp, fp, p, n, t)
    got = acc.compute()
    assert got["num_pixels"] == scores.size and got["num_positive"] == p and got["num_batches"] == 5
    assert abs(got["pixel_auroc"] - auroc) <= 1e-12
    assert abs(got["best_iou"] - iou) <= 1e-12 and got["best_threshold"] == thr
    iou_pb, thr_pb = brute_per_batch(batches, t)
    assert abs(got["best_iou_per_batch"] - iou_pb) <= 1e-12 and got["best_threshold_per_batch"] == thr_pb


@pytest.mark.parametrize(("score_range", "num_bins"), [((-1.0, 1.0), 1000), ((1e6, 1e6 + 1e-3), 4096)])
def test_scores_at_and_next_to_every_edge(score_range, num_bins):
    # float64 scores exactly on each edge and one ulp either side: the binning must decide "s >= t_j" exactly.
    acc = PixelScoreAccumulator(num_bins=num_bins, score_range=score_range)
    t = acc.thresholds
    scores = np.concatenate([t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf), [score_range[1]]])
    labels = np.arange(scores.size) % 3 == 0
    acc.update(torch.tensor(scores).view(1, 1, -1), torch.tensor(labels).view(1, 1, -1))
    tp, fp = brute_counts(scores, labels, t)
    np.testing.assert_array_equal(acc.counts()["tp"], tp)
    np.testing.assert_array_equal(acc.counts()["fp"], fp)


def test_large_random_equals_brute_force():
    # ~330k pixels over 6 batches, 64 bins, scores well outside the range on both sides.
    batches = random_batches(1, [10, 12, 9, 11, 8, 14], hw=(96, 96))
    acc = PixelScoreAccumulator(num_bins=64, score_range=(-0.5, 1.2))
    for maps, masks in batches:
        acc.update(maps, masks)
    scores = np.concatenate([m.numpy().ravel() for m, _ in batches])
    labels = np.concatenate([k.numpy().ravel() for _, k in batches])
    assert scores.size > 300_000
    tp, fp = brute_counts(scores, labels, acc.thresholds)
    auroc, iou, thr = brute_metrics(tp, fp, int(labels.sum()), int((~labels).sum()), acc.thresholds)
    got = acc.compute()
    assert abs(got["pixel_auroc"] - auroc) <= 1e-12
    assert abs(got["best_iou"] - iou) <= 1e-12 and got["best_threshold"] == thr
    iou_pb, thr_pb = brute_per_batch(batches, acc.thresholds)
    assert abs(got["best_iou_per_batch"] - iou_pb) <= 1e-12 and got["best_threshold_per_batch"] == thr_pb


def test_per_batch_skips_batches_without_positives_or_predictions():
    # Batch 2 has no positives: defined only at thresholds where it predicts something.
    acc = PixelScoreAccumulator(num_bins=4, score_range=(0.0, 1.0))
    maps1 = torch.tensor([[[0.9, 0.1], [0.6, 0.1]]])
    masks1 = torch.tensor([[[1, 0], [1, 0]]])
    maps2 = torch.tensor([[[0.3, 0.1], [0.1, 0.1]]])
    masks2 = torch.zeros(1, 2, 2, dtype=torch.int64)
    acc.update(maps1, masks1)
    acc.update(maps2, masks2)
    # Thresholds 0, .25, .5, .75. Batch 1 IoU: .5, 1, 1, .5. Batch 2: 0, 0, undefined, undefined.
    # Per-batch means: .25, .5, 1, .5 -> best 1 at 0.5. Pooled IoU: 2/8, 2/3, 1, .5 -> best 1 at 0.5.
    got = acc.compute()
    assert got["best_iou_per_batch"] == 1.0 and got["best_threshold_per_batch"] == 0.5
    assert got["best_iou"] == 1.0 and got["best_threshold"] == 0.5


def test_within_1e3_of_sklearn_on_continuous_scores():
    g = np.random.default_rng(2)
    labels = g.random((8, 100, 100)) < 0.2
    scores = g.normal(size=labels.shape) + 1.0 * labels
    exact = roc_auc_score(labels.ravel(), scores.ravel())
    got = pixel_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels), num_bins=10_000)
    assert abs(got - exact) < 1e-3
    acc = PixelScoreAccumulator(score_range=score_range_from([scores]))  # 65 536 bins
    acc.update(torch.tensor(scores), torch.tensor(labels))
    result = acc.compute()
    assert abs(result["pixel_auroc"] - exact) <= result["auroc_bin_error_bound"] < 1e-4


def test_error_bound_is_half_the_tied_pair_fraction():
    g = np.random.default_rng(8)
    labels = g.random((3, 30, 30)) < 0.4
    scores = g.normal(size=labels.shape) + labels
    acc = PixelScoreAccumulator(num_bins=16, score_range=(-2.0, 3.0))  # coarse: a visible error
    acc.update(torch.tensor(scores), torch.tensor(labels))
    result = acc.compute()
    s = np.clip(scores.ravel(), -2.0, 3.0)
    bins = np.searchsorted(acc.thresholds, s, side="right") - 1  # #{t_j <= s} - 1, j >= 1 edges
    pos, neg = bins[labels.ravel()], bins[~labels.ravel()]
    same = (pos[:, None] == neg[None, :]).mean()
    assert abs(result["auroc_bin_error_bound"] - same / 2) <= 1e-12
    exact = roc_auc_score(labels.ravel(), scores.ravel())
    assert 1e-3 < abs(result["pixel_auroc"] - exact) <= result["auroc_bin_error_bound"]


def test_equals_sklearn_exactly_when_scores_lie_on_edges():
    # Integer scores 0..9 with bins of width 1 over (0, 10): every tie group is one bin, so the trapezoid
    # over edges is the exact tie-aware (Mann-Whitney) AUROC; best IoU equals the brute force over all
    # unique scores.
    g = np.random.default_rng(3)
    labels = g.random((4, 50, 50)) < 0.3
    scores = np.clip(g.integers(0, 7, size=labels.shape) + 3 * labels, 0, 9)
    acc = PixelScoreAccumulator(num_bins=10, score_range=(0, 10))
    acc.update(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels))
    got = acc.compute()
    assert abs(got["pixel_auroc"] - roc_auc_score(labels.ravel(), scores.ravel())) <= 1e-12
    ious = [
        ((scores >= t) & labels).sum() / ((scores >= t) | labels).sum() for t in np.unique(scores)
    ]
    assert abs(got["best_iou"] - max(ious)) <= 1e-12
    assert got["best_threshold"] == np.unique(scores)[int(np.argmax(ious))]


def test_perfect_inverted_and_random():
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(6, 40, 40, generator=g) < 0.25
    perfect = masks.float()
    assert pixel_auroc(perfect, masks) == 1.0
    assert best_iou(perfect, masks)[0] == 1.0
    assert pixel_auroc(-perfect, masks) == 0.0
    assert pixel_auroc(1 - perfect, masks, score_range=(0, 1)) == 0.0
    noise = torch.rand(6, 40, 40, generator=g)
    assert abs(pixel_auroc(noise, masks) - 0.5) < 0.02
    # Constant maps: every pixel tied -> 0.5.
    assert pixel_auroc(torch.full((2, 4, 4), 3.0), masks[:2, :4, :4]) == 0.5


def test_streaming_equals_one_update():
    batches = random_batches(5, [4, 1, 7, 3])
    one = PixelScoreAccumulator(num_bins=500, score_range=(-2, 3))
    one.update(torch.cat([m for m, _ in batches]), torch.cat([k for _, k in batches]))
    many = PixelScoreAccumulator(num_bins=500, score_range=(-2, 3))
    for maps, masks in batches:
        many.update(maps.unsqueeze(1), masks)  # (B,1,H,W) maps with (B,H,W) masks
    for key in ("tp", "fp"):
        np.testing.assert_array_equal(one.counts()[key], many.counts()[key])
    a, b = one.compute(), many.compute()
    for key in ("pixel_auroc", "best_iou", "best_threshold", "num_pixels", "num_positive"):
        assert a[key] == b[key]
    assert a["best_iou_per_batch"] == a["best_iou"]  # one batch: the per-batch mean is the pooled IoU
    assert b["num_batches"] == 4


def test_mask_encodings_numpy_input_and_caller_tensor_untouched():
    batches = random_batches(6, [3], outside=False)
    maps, masks = batches[0]
    maps64 = maps.double()
    before = maps64.clone()
    results = []
    for m in (masks, masks.to(torch.uint8), masks.float(), masks.numpy()):
        acc = PixelScoreAccumulator(num_bins=100, score_range=(-2, 3), device="cpu")
        acc.update(maps64, m)
        results.append(acc.compute())
    assert all(r == results[0] for r in results)
    assert torch.equal(maps64, before)
    acc = PixelScoreAccumulator(num_bins=100, score_range=(-2, 3))
    acc.update(maps.numpy(), masks.numpy())
    assert acc.compute() == results[0]
    acc.reset()
    with pytest.raises(ConfigError):
        acc.compute()


def test_undefined_cases_are_nan():
    maps = torch.rand(2, 8, 8)
    no_pos = PixelScoreAccumulator(num_bins=10, score_range=(0, 1))
    no_pos.update(maps, torch.zeros(2, 8, 8))
    r = no_pos.compute()
    assert math.isnan(r["pixel_auroc"]) and math.isnan(r["best_iou"]) and math.isnan(r["best_threshold"])
    assert math.isnan(r["best_iou_per_batch"]) and r["num_positive"] == 0
    no_neg = PixelScoreAccumulator(num_bins=10, score_range=(0, 1))
    no_neg.update(maps, torch.ones(2, 8, 8))
    r = no_neg.compute()
    assert math.isnan(r["pixel_auroc"])
    assert r["best_iou"] == 1.0 and r["best_threshold"] == 0.0  # predicting everything is perfect


def test_score_range_from():
    assert score_range_from([torch.tensor([[1.0, -2.0]]), np.array([5.0, math.nan, math.inf])]) == (-2.0, 5.0)
    assert score_range_from([torch.full((3,), 2.0)]) == (2.0, 3.0)
    with pytest.raises(ConfigError):
        score_range_from([torch.tensor([math.nan])])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"score_range": None},
        {"score_range": (1.0, 1.0)},
        {"score_range": (2.0, 1.0)},
        {"score_range": (0.0, math.inf)},
        {"score_range": (math.nan, 1.0)},
        {"score_range": "ab"},
        {"score_range": (0, 1), "num_bins": 0},
        {"score_range": (0, 1), "num_bins": 2.5},
        {"score_range": (0, 1), "num_bins": True},
        {"score_range": (1e12, 1e12 + 1e-3), "num_bins": 65_536},  # float64 cannot resolve these bins
    ],
)
def test_bad_construction(kwargs):
    with pytest.raises(ConfigError):
        PixelScoreAccumulator(**kwargs)


def test_bad_updates_and_compute():
    acc = PixelScoreAccumulator(num_bins=10, score_range=(0, 1))
    with pytest.raises(ConfigError):
        acc.compute()  # empty
    with pytest.raises(ConfigError):
        acc.update(torch.rand(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ConfigError):
        acc.update(torch.rand(8, 8), torch.zeros(8, 8))
    with pytest.raises(ConfigError):
        acc.update(torch.rand(2, 2, 8, 8), torch.zeros(2, 2, 8, 8))
    with pytest.raises(ConfigError):
        acc.update(torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(2, 8, 8))
    with pytest.raises(ConfigError):
        pixel_auroc(torch.rand(2, 4, 4), torch.zeros(2, 4, 5))

    nan = PixelScoreAccumulator(num_bins=10, score_range=(0, 1))
    maps = torch.rand(1, 4, 4)
    maps[0, 0, 0] = math.nan
    nan.update(maps, torch.zeros(1, 4, 4))
    with pytest.raises(ConfigError, match="1 NaN"):
        nan.compute()
    bad = PixelScoreAccumulator(num_bins=10, score_range=(0, 1))
    bad.update(torch.rand(1, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(ConfigError, match="16 mask values"):
        bad.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    batches = random_batches(7, [4, 6])
    results = []
    for device in ("cpu", "cuda"):
        acc = PixelScoreAccumulator(num_bins=1000, score_range=(-2, 3))
        for maps, masks in batches:
            acc.update(maps.to(device), masks.to(device))
        results.append(acc.compute())
    assert results[0] == results[1]
