"""The disentanglement study's training (FactorVAE, AD-FactorVAE, β-VAE on dSprites), in the four roles every
study has: ``config`` (typed config and its schedule), ``step`` (models and the two-optimiser update),
``state`` (``DisentangleState``, the shared loop's trainee) and ``evaluate`` (metrics and figure)."""

from vae_attention.training.disentangle.config import MODELS, DisentangleConfig
from vae_attention.training.disentangle.state import DisentangleState
from vae_attention.training.disentangle.step import (
    Models,
    Optimizers,
    ad_attention_maps,
    ad_maps_from_activation,
    build_models,
    build_optimizers,
    check_model,
    train_step,
)

__all__ = [
    "MODELS",
    "DisentangleConfig",
    "DisentangleState",
    "Models",
    "Optimizers",
    "ad_attention_maps",
    "ad_maps_from_activation",
    "build_models",
    "build_optimizers",
    "check_model",
    "train_step",
]
