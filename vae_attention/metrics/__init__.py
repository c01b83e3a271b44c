"""Evaluation metrics of trained models."""

from vae_attention.metrics.factor_vae import factor_vae_metric

__all__ = ["factor_vae_metric"]
