"""The typed configuration of one disentanglement training run (everything a ``TrainState`` needs).

Defaults follow Table 1 of the reproducibility report (Adam 1e-4 (0.9, 0.999) for the VAE, 1e-4 (0.5, 0.9) for
the discriminator, batch 64, z = 10) and Kim & Mnih's discriminator (6 × 1000 units). Loop settings
(iterations, report/checkpoint/eval cadence) belong to the trainable, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vae_attention.attention import GRAD_METHODS, GRAD_NORMS
from vae_attention.config import config_from_dict
from vae_attention.errors import ConfigError
from vae_attention.losses import PAIR_POLICIES

MODELS = ("factorvae", "ad_factorvae", "betavae")


@dataclass(frozen=True)
class DisentangleConfig:
    model: Literal["factorvae", "ad_factorvae", "betavae"] = "factorvae"
    gamma: float = 40.0  # weight of the TC estimate (FactorVAE, AD-FactorVAE; 0 allowed for β-VAE)
    lambda_ad: float = 1.0  # weight of L_AD (AD-FactorVAE); L_AD ∈ [0, 1] against ~50–80 nats of ELBO
    beta: float = 4.0  # weight of the KL (β-VAE baseline)
    z_dim: int = 10
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    d_lr: float = 1e-4
    d_betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    d_hidden_layers: int = 6
    d_hidden_units: int = 1000
    attention_layer: str = "encoder.0"  # first conv: 32×32 maps; the seed used the last conv and regretted it
    pairs: str = "consecutive_dims"
    ad_activation: str = "relu"  # the paper's Eq. 2; L_AD needs non-negative maps
    normalize_grads: str = "none"
    grad_method: str = "auto"
    eval_size: int = 5000  # fixed held-out images for eval_recon_loss, excluded from training batches
    data_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model={self.model!r} is not one of {', '.join(MODELS)}"),
            (self.gamma > 0 or (self.model == "betavae" and self.gamma == 0), f"gamma must be > 0, got {self.gamma}"),
            (self.lambda_ad >= 0, f"lambda_ad must be >= 0, got {self.lambda_ad}"),
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.z_dim >= 2, f"z_dim must be >= 2 (L_AD compares pairs of dims), got {self.z_dim}"),
            (self.lr > 0 and self.d_lr > 0, f"learning rates must be > 0, got lr={self.lr}, d_lr={self.d_lr}"),
            (all(0 <= b < 1 for b in self.betas + self.d_betas), "Adam betas must lie in [0, 1)"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (permute_dims shuffles across it), got {self.batch_size}"),
            (self.d_hidden_layers >= 1 and self.d_hidden_units >= 1, "discriminator needs >= 1 layer and unit"),
            (self.pairs in PAIR_POLICIES, f"pairs={self.pairs!r} is not one of {', '.join(PAIR_POLICIES)}"),
            # L_AD's min/sum overlap is only a [0, 1] similarity for non-negative maps
            (self.ad_activation in ("relu", "abs"), f"ad_activation={self.ad_activation!r} is not relu or abs"),
            (self.normalize_grads in GRAD_NORMS, f"normalize_grads={self.normalize_grads!r} not in {GRAD_NORMS}"),
            (self.grad_method in GRAD_METHODS, f"grad_method={self.grad_method!r} not in {GRAD_METHODS}"),
            (self.eval_size >= 0, f"eval_size must be >= 0, got {self.eval_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def uses_discriminator(self) -> bool:
        return self.model in ("factorvae", "ad_factorvae")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DisentangleConfig:
        return config_from_dict(cls, values)

    def replace(self, **changes: Any) -> DisentangleConfig:
        return dataclasses.replace(self, **changes)
