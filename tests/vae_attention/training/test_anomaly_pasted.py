"""The MNIST evaluation's pass over the pasted set: its pixel metrics against scikit-learn on the same pixels.

Data: the scikit-learn handwriting written as MNIST IDX files (``write_sklearn_digits_mnist``). The oracle is
``sklearn.metrics.roc_auc_score`` over every pixel of the pasted set, with maps computed here by the public
``attention_maps`` (not the evaluation's code path); the evaluation bins scores into ``num_bins`` thresholds, so
the two agree to within the binning (65,536 bins).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import write_sklearn_digits_mnist
from sklearn.metrics import roc_auc_score

from vae_attention.attention import attention_maps
from vae_attention.data.pasted_mnist import STROKE, PastedMNIST
from vae_attention.training.anomaly import AnomalyConfig, AnomalyState
from vae_attention.training.anomaly.pasted import PASTED_SEED, pasted_metrics

BINNING = 1e-3  # 65,536 bins over the maps' range: a tie-broken threshold moves AUROC by far less


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("sklearn_mnist")
    write_sklearn_digits_mnist(root)
    config = AnomalyConfig(dataset="mnist", digit=1, data_dir=str(root), epochs=1, batch_size=16, seed=3,
                           attention="paper", score="sum")  # one backward per batch; ReLU at the layer
    state = AnomalyState(config, device="cpu")
    state.advance()  # one epoch: maps of a model that has seen the inliers, cheap
    return state


def test_pasted_pixel_metrics_match_sklearn_on_the_same_pixels(state):
    cfg = state.config
    pasted = PastedMNIST(cfg.data_dir, cfg.digit, seed=PASTED_SEED)
    metrics = pasted_metrics(state)
    assert state.model.training  # the pass restores the mode it found

    state.model.eval()
    maps = attention_maps(state.model, pasted.images, cfg.resolved_layer, score=cfg.resolved_score,
                          activation=cfg.resolved_activation, normalize_grads=cfg.normalize_grads,
                          upsample_first=cfg.resolved_upsample_first)
    state.model.train()
    truth = pasted.masks[:, 0].numpy().ravel()
    assert metrics["pixel_auroc_pasted"] == pytest.approx(roc_auc_score(truth, maps.numpy().ravel()), abs=BINNING)
    intensity = pasted.images[:, 0].numpy()
    assert metrics["baseline_intensity_pixel_auroc_pasted"] == pytest.approx(
        roc_auc_score(truth, intensity.ravel()), abs=BINNING)
    stroke = (pasted.kinds == STROKE).numpy()
    assert metrics["pixel_auroc_pasted_stroke"] == pytest.approx(
        roc_auc_score(pasted.masks[stroke, 0].numpy().ravel(), maps[stroke].numpy().ravel()), abs=BINNING)
    # best IoU of the intensity map, brute force over every distinct intensity as the threshold
    best = max(np.logical_and(intensity >= t, truth.reshape(intensity.shape)).sum()
               / np.logical_or(intensity >= t, truth.reshape(intensity.shape)).sum() for t in np.unique(intensity))
    assert metrics["baseline_intensity_best_iou_pasted"] == pytest.approx(best, abs=BINNING)


def test_the_mnist_evaluation_logs_them_beside_image_auroc(state, tmp_path):
    metrics, _ = state.evaluate(tmp_path)
    assert {"image_auroc", "pixel_auroc_pasted", "best_iou_pasted", "best_iou_seed_pasted",
            "baseline_intensity_pixel_auroc_pasted", "baseline_pixel_auroc_pasted"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if "auroc" in k or "iou" in k)
