"""Evaluation metrics of trained models."""

from vae_attention.metrics.factor_vae import factor_vae_metric, seed_variant_metric
from vae_attention.metrics.pixel import PixelScoreAccumulator, best_iou, pixel_auroc, score_range_from
from vae_attention.metrics.seed_iou import best_iou_seed

__all__ = ["PixelScoreAccumulator", "best_iou", "best_iou_seed", "factor_vae_metric", "pixel_auroc", "score_range_from",
           "seed_variant_metric"]
