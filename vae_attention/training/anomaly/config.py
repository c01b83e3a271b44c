"""The typed configuration of one anomaly-localisation run (one-class VAE + latent attention maps).

Defaults follow Table 1 of the reproducibility report: Adam (0.9, 0.999, 1e-8); MNIST 200 epochs, batch 128,
lr 1e-3; UCSD Ped1 300 epochs, batch 128, lr ∈ {1e-3, 5e-4, 1e-4}; MVTec-AD 300 epochs, batch 16,
lr 5e-4, 256×256. Dataset-dependent defaults are resolved by the ``resolved_*`` properties.

Attention modes: ``authors`` (every number of the report came from it: score Σμ, |·| of the bilinearly
upsampled map, as the authors' ``gradcam.py``) and ``paper`` (mean over latent dimensions of per-dimension
ReLU maps, activated at the layer's resolution). ``activation="auto"`` follows the mode. The authors'
code also divides gradients by their RMS over the whole batch; that is ``normalize_grads="batch"``, off by
default because it makes an image's map depend on its batch-mates, which pooled pixel metrics cannot have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from vae_attention.attention import Activation, GradNorm
from vae_attention.config import check_choices, config_from_dict
from vae_attention.errors import ConfigError
from vae_attention.models import DEFAULT_RESNET_LAYER
from vae_attention.training.loop import Schedule, check_cadences

DatasetName = Literal["mnist", "ucsd", "mvtec"]
AttentionMode = Literal["authors", "paper"]
AnomalyActivation = Literal["auto", Activation]  # "auto": the attention mode's own
GtPolicy = Literal["gt_only", "all_clips"]  # UCSD test clips: only those with pixel masks, or all of them

DATASETS = get_args(DatasetName)
# mode -> (score, activation, activate after upsampling)
ATTENTION_MODES: dict[str, tuple[str, str, bool]] = {"authors": ("sum", "abs", True),
                                                     "paper": ("mean_per_dim", "relu", False)}
DEFAULT_IMAGE_SIZE = {"mnist": 28, "ucsd": 100, "mvtec": 256}
DEFAULT_LAYER = {"mnist": "encoder.2", "ucsd": "encoder.4", "mvtec": DEFAULT_RESNET_LAYER}


@dataclass(frozen=True)
class AnomalyConfig:
    dataset: DatasetName = "mnist"
    category: str = ""  # MVTec-AD only (required there)
    digit: int | None = None  # MNIST only (required there): the inlier digit
    eval_digits: tuple[int, ...] = ()  # MNIST outlier digits at test time; () = the report's choice or all others
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    epochs: int = 200  # with report_every, checkpoint_every, eval_every: the schedule, in epochs
    batch_size: int = 128
    image_size: int = 0  # 0 = the dataset's (28, 100, 256)
    z_dim: int = 32
    attention_layer: str = ""  # "" = the dataset's default (MNIST encoder.2, UCSD encoder.4, ResNet layer3)
    attention: AttentionMode = "authors"
    activation: AnomalyActivation = "auto"
    normalize_grads: GradNorm = "none"  # "batch" (the authors' code) couples images: never for pooled pixel metrics
    gt_policy: GtPolicy = "gt_only"
    augment: bool = True  # MVTec-AD training flips and small rotations
    max_train_images: int = 0  # 0 = all; smaller for quick runs and tests
    max_test_images: int = 0
    num_bins: int = 65_536  # threshold bins of the pixel metrics
    report_every: int = 1
    checkpoint_every: int = 10
    eval_every: int = 50
    figure_images: int = 6
    data_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        checks = [
            (self.dataset != "mnist" or self.digit in range(10), f"MNIST needs digit 0..9, got {self.digit}"),
            (self.dataset != "mvtec" or bool(self.category), "MVTec-AD needs a category"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.image_size >= 0, f"image_size must be >= 0, got {self.image_size}"),
            (self.z_dim >= 1, f"z_dim must be >= 1, got {self.z_dim}"),
            (self.max_train_images >= 0 and self.max_test_images >= 0, "max_*_images must be >= 0"),
            (self.num_bins >= 2, f"num_bins must be >= 2, got {self.num_bins}"),
            (self.figure_images >= 1, f"figure_images must be >= 1, got {self.figure_images}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        size = self.resolved_image_size
        if self.dataset in ("mnist", "ucsd") and size != DEFAULT_IMAGE_SIZE[self.dataset]:
            raise ConfigError(f"image_size={size}: the {self.dataset} VAE takes {DEFAULT_IMAGE_SIZE[self.dataset]}² "
                              "inputs only")
        if self.dataset == "mvtec" and (size % 32 or size < 32):
            raise ConfigError(f"image_size={size}: the ResNet-18 VAE needs a multiple of 32")
        check_cadences(self.schedule, "epochs")

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.epochs, self.report_every, self.checkpoint_every, self.eval_every)

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or DEFAULT_IMAGE_SIZE[self.dataset]

    @property
    def resolved_layer(self) -> str:
        return self.attention_layer or DEFAULT_LAYER[self.dataset]

    @property
    def score(self) -> str:
        return ATTENTION_MODES[self.attention][0]

    @property
    def upsample_first(self) -> bool:
        return ATTENTION_MODES[self.attention][2]

    @property
    def resolved_activation(self) -> str:
        return ATTENTION_MODES[self.attention][1] if self.activation == "auto" else self.activation

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AnomalyConfig:
        return config_from_dict(cls, values)

    def replace(self, **changes: Any) -> AnomalyConfig:
        return dataclasses.replace(self, **changes)
