"""The typed configuration of one disentanglement run: the science, its schedule and its evaluation sizes.

Defaults follow Table 1 of the reproducibility report (150,000 iterations, Adam 1e-4 (0.9, 0.999) for the
VAE, 1e-4 (0.5, 0.9) for the discriminator, batch 64, z = 10) and Kim & Mnih's discriminator (6 × 1000
units). The loop cadences (``iterations``, ``report_every``, ``checkpoint_every``, ``eval_every``) form
``schedule``; the metric sizes follow disentanglement_lib's FactorVAE study and the report's code.

Protocol settings (issue 10; defaults = this study's own choices; "seed" = the report's code,
Carmoondedraak/FACT-2021 ``disentanglement/``, at the commits that produced its Table 1 results):

- ``architecture``: ``kim_mnih`` (Kim & Mnih's Table 1: four convs, FC 128, FC 2·z; ``DSpritesVAE``) or
  ``konny`` (1Konny/FactorVAE ``model.py`` ``FactorVAE1``, which the report's ``model.py`` copies: all-conv, the
  FC layers as a 4×4 conv to 128 channels and a 1×1 conv to 2·z; ``AllConvDSpritesVAE``).
- ``encoder_fc_relu``: the ReLU after the encoder's 128-unit layer. Kim & Mnih list none; 1Konny and
  disentanglement_lib have one (so does ``DSpritesVAE`` by default).
- ``loop_order``: ``sequential`` (both backward passes, then both optimisers step; the discriminator sees a
  detached z) or ``deferred`` (the report's ``ad_factorvae.py``/``vanilla.py``: both ``step()`` calls at the top
  of the *next* iteration, and the discriminator loss uses the un-detached D(z) of the VAE loss, so its backward
  adds ∂L_D/∂θ_encoder to the VAE gradient). See ``step.py``.
- ``ad_gradient``: ``differentiable`` (L_AD is backpropagated, the paper's intent) or ``detached`` (L_AD is only a
  number added to the loss, as the report's ``with torch.no_grad(): gcam.generate()``: AD-FactorVAE then trains
  exactly as FactorVAE).
- ``ad_score``: ``per_dim`` (one map per latent dimension, s = μ_i) or ``sum`` (one map per image, s = Σ_i μ_i,
  the report's code). Σμ maps can only be paired across images, so ``sum`` needs ``pairs="consecutive_images"``,
  and ``consecutive_images`` always compares Σμ maps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from vae_attention.attention import GradMethod, GradNorm
from vae_attention.config import check_choices, config_from_dict
from vae_attention.errors import ConfigError
from vae_attention.losses import PairPolicy
from vae_attention.training.loop import Schedule, check_cadences

ModelName = Literal["factorvae", "ad_factorvae", "betavae"]
# L_AD's min/sum overlap is only a [0, 1] similarity for non-negative maps
AdActivation = Literal["relu", "abs"]
Architecture = Literal["kim_mnih", "konny"]
LoopOrder = Literal["sequential", "deferred"]
AdGradient = Literal["differentiable", "detached"]
AdScore = Literal["per_dim", "sum"]
Precision = Literal["fp32", "bf16"]  # checked by check_choices like every Literal field
CompileMode = Literal["off", "default", "reduce-overhead"]  # torch.compile modes (see step.compile_models)

MODELS = get_args(ModelName)


@dataclass(frozen=True)
class DisentangleConfig:
    model: ModelName = "factorvae"
    gamma: float = 40.0  # weight of the TC estimate (FactorVAE, AD-FactorVAE; 0 allowed for β-VAE)
    lambda_ad: float = 1.0  # weight of L_AD (AD-FactorVAE); L_AD ∈ [0, 1] against ~50–80 nats of ELBO
    beta: float = 4.0  # weight of the KL (β-VAE baseline)
    z_dim: int = 10
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    d_lr: float = 1e-4
    d_betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    architecture: Architecture = "kim_mnih"
    encoder_fc_relu: bool = True
    loop_order: LoopOrder = "sequential"
    d_hidden_layers: int = 6
    d_hidden_units: int = 1000
    attention_layer: str = "encoder.0"  # first conv: 32×32 maps; the seed used the last conv and regretted it
    pairs: PairPolicy = "consecutive_dims"
    ad_activation: AdActivation = "relu"  # the paper's Eq. 2
    ad_gradient: AdGradient = "differentiable"
    ad_score: AdScore = "per_dim"
    normalize_grads: GradNorm = "none"
    grad_method: GradMethod = "auto"
    # bf16 autocast of the VAE's forward (losses, discriminator and Adam stay fp32); off until measured faster
    precision: Precision = "fp32"
    # torch.compile (inductor) of the parts of the step that are differentiated once; off: compiling costs
    # tens of seconds per process and has not been measured faster on CPU (see step.compile_models)
    compile: CompileMode = "off"
    eval_size: int = 5000  # fixed held-out images for eval_recon_loss, excluded from training batches
    data_dir: str | None = None
    seed: int = 0
    # The schedule, in optimiser iterations.
    iterations: int = 150_000
    report_every: int = 500
    checkpoint_every: int = 5_000
    eval_every: int = 10_000
    # disentanglement_lib's FactorVAE metric sizes (≈ 1 M images drawn, ~0.5 M unique encodes per eval)
    metric_batch_size: int = 64
    metric_num_train: int = 10_000
    metric_num_eval: int = 5_000
    metric_num_variance: int = 10_000
    # the report's code: L = 100, 800 stratified votes
    seed_metric_batch_size: int = 100
    seed_metric_votes: int = 800
    figure_images: int = 6

    def __post_init__(self) -> None:
        check_choices(self)
        checks = [
            (self.gamma > 0 or (self.model == "betavae" and self.gamma == 0), f"gamma must be > 0, got {self.gamma}"),
            (self.lambda_ad >= 0, f"lambda_ad must be >= 0, got {self.lambda_ad}"),
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.z_dim >= 2, f"z_dim must be >= 2 (L_AD compares pairs of dims), got {self.z_dim}"),
            (self.lr > 0 and self.d_lr > 0, f"learning rates must be > 0, got lr={self.lr}, d_lr={self.d_lr}"),
            (all(0 <= b < 1 for b in self.betas + self.d_betas), "Adam betas must lie in [0, 1)"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (permute_dims shuffles across it), got {self.batch_size}"),
            (self.d_hidden_layers >= 1 and self.d_hidden_units >= 1, "discriminator needs >= 1 layer and unit"),
            (self.eval_size >= 0, f"eval_size must be >= 0, got {self.eval_size}"),
            (self.ad_score == "per_dim" or self.pairs == "consecutive_images",
             f"ad_score='sum' gives one map per image, which only pairs='consecutive_images' can pair "
             f"(got pairs={self.pairs!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        check_cadences(self.schedule, "iterations")
        for name in ("metric_batch_size", "metric_num_train", "metric_num_eval", "metric_num_variance",
                     "seed_metric_batch_size", "seed_metric_votes", "figure_images"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.iterations, self.report_every, self.checkpoint_every, self.eval_every)

    @property
    def ad_map_score(self) -> str:
        """The score L_AD's maps are taken of: Σμ (``"sum"``) for ``consecutive_images``, else per dimension."""
        return "sum" if self.pairs == "consecutive_images" else "per_dim"

    @property
    def uses_discriminator(self) -> bool:
        return self.model in ("factorvae", "ad_factorvae")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DisentangleConfig:
        return config_from_dict(cls, values)

    def replace(self, **changes: Any) -> DisentangleConfig:
        return dataclasses.replace(self, **changes)
