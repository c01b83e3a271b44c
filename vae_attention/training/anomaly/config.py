"""The typed configuration of one anomaly-localisation run (one-class VAE + latent attention maps).

Defaults follow Table 1 of the reproducibility report: Adam (0.9, 0.999, 1e-8); MNIST 200 epochs, batch 128,
lr 1e-3; UCSD Ped1 300 epochs, batch 128, lr ∈ {1e-3, 5e-4, 1e-4}; MVTec-AD 300 epochs, batch 16,
lr 5e-4, 256×256. Dataset-dependent defaults are resolved by the ``resolved_*`` properties.

Attention modes: ``authors`` (every number of the report came from it: score Σμ, |·| of the bilinearly
upsampled map, as the authors' ``gradcam.py``) and ``paper`` (mean over latent dimensions of per-dimension
ReLU maps, activated at the layer's resolution). ``activation="auto"`` follows the mode. The authors'
code also divides gradients by their RMS over the whole batch; that is ``normalize_grads="batch"``, off by
default because it makes an image's map depend on its batch-mates, which pooled pixel metrics cannot have.
``score``/``upsample_first`` = "auto" follow the mode too; ``score="normal_diff"`` is the paper's Eqs. 3–4 score
(``vae_attention.anomaly_scores.normal_difference_score``, inlier statistics over the training set).

Protocol settings (issue 10; defaults = this study's own choices; "seed" = the report's code,
Carmoondedraak/FACT-2021 ``expVAE_pl/``):

- ``loss``: ``elbo`` (Bernoulli recon summed over pixels + analytic KL, both averaged over the batch) or
  ``seed`` (``exp_vae_pl.py`` ``ExpVAE.loss_f``: BCE summed over the whole batch for MNIST/UCSD, MSE averaged
  over every element for MVTec, plus 0.1 × the one-sample KL estimate log q(z|x) − log p(z) averaged over
  batch and latent dims); see ``objective.py``.
- ``architecture``: ``default`` or ``seed`` (``vae_model.py``: MVTec = pl_bolts' ``resnet18_encoder/decoder``
  with a torchvision ResNet-18 trunk, average pooling, Linear(512, ·) heads; UCSD = third conv
  Conv(128, 256, 4, 2, 1) + ReLU to 12×12; MNIST = the authors' ConvVAE, the same as ``default``).
- ``input_range``: ``unit`` ([0, 1], 3 channels for MVTec) or ``seed`` (``MVTEC_Dataset.py``: MVTec RGB
  categories Normalize(0.5, 0.5) → [−1, 1]; grid, screw, zipper one channel in [0, 1]). MNIST/UCSD: [0, 1]
  under both.
- ``augment_policy`` (MVTec training, with ``augment``): ``small`` (flips, ±10°) or ``seed`` (horizontal
  flip p = 0.5, then RandomRotation(90): uniform angle in [−90°, 90°], nearest, fill 0).
- ``early_stopping_patience``: 0 = off; P > 0 stops after P consecutive epochs whose loss on the held-out
  inlier images is not strictly below the best so far (PyTorch Lightning's ``EarlyStopping``, as the report:
  P = 50 on ``val_loss``). Inliers: MNIST test images of the digit, MVTec ``test/good``, UCSD every 10th
  training frame (see ``state.py``).
- ``eval_set``: ``all`` or ``defective`` (MVTec only: drop ``test/good``, as the report's ``eval_set``).
- ``model_selection``: ``last`` or ``test_auroc`` (keep the weights of the evaluation with the highest test
  AUROC, pixel AUROC or MNIST's image AUROC, as the report's ``ModelCheckpoint(monitor='auroc')``: optimistic).
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
AnomalyScore = Literal["auto", "sum", "mean_per_dim", "normal_diff"]  # "auto": the attention mode's own
UpsampleFirst = Literal["auto", "yes", "no"]  # activate after upsampling; "auto": the attention mode's own
AnomalyLoss = Literal["elbo", "seed"]
Architecture = Literal["default", "seed"]
InputRange = Literal["unit", "seed"]
AugmentPolicy = Literal["small", "seed"]
EvalSet = Literal["all", "defective"]
ModelSelection = Literal["last", "test_auroc"]

DATASETS = get_args(DatasetName)
# mode -> (score, activation, activate after upsampling)
ATTENTION_MODES: dict[str, tuple[str, str, bool]] = {"authors": ("sum", "abs", True),
                                                     "paper": ("mean_per_dim", "relu", False)}
DEFAULT_IMAGE_SIZE = {"mnist": 28, "ucsd": 100, "mvtec": 256}
DEFAULT_LAYER = {"mnist": "encoder.2", "ucsd": "encoder.4", "mvtec": DEFAULT_RESNET_LAYER}
# MVTec categories the report's loader reads as one channel in [0, 1] (MVTEC_Dataset.py: grayscale_classes)
SEED_GRAYSCALE_CATEGORIES = ("grid", "screw", "zipper")


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
    score: AnomalyScore = "auto"
    upsample_first: UpsampleFirst = "auto"
    loss: AnomalyLoss = "elbo"
    architecture: Architecture = "default"
    input_range: InputRange = "unit"
    augment_policy: AugmentPolicy = "small"
    early_stopping_patience: int = 0  # epochs; 0 = off
    eval_set: EvalSet = "all"
    model_selection: ModelSelection = "last"
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
            (self.early_stopping_patience >= 0,
             f"early_stopping_patience must be >= 0 (0 = off), got {self.early_stopping_patience}"),
            (self.eval_set == "all" or self.dataset == "mvtec",
             f"eval_set={self.eval_set!r} is for MVTec-AD only (MNIST/UCSD test sets have no 'good' folder)"),
            (self.loss == "seed" or self.input_low == 0.0,
             "input_range='seed' puts this MVTec category in [-1, 1], where a Bernoulli likelihood (loss='elbo') "
             "is undefined: use loss='seed' (MSE, as the report) or input_range='unit'"),
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
    def resolved_score(self) -> str:
        return ATTENTION_MODES[self.attention][0] if self.score == "auto" else self.score

    @property
    def resolved_upsample_first(self) -> bool:
        return ATTENTION_MODES[self.attention][2] if self.upsample_first == "auto" else self.upsample_first == "yes"

    @property
    def seed_grayscale(self) -> bool:
        """MVTec category read as one channel in [0, 1] under ``input_range="seed"``."""
        return self.dataset == "mvtec" and self.input_range == "seed" and self.category in SEED_GRAYSCALE_CATEGORIES

    @property
    def in_channels(self) -> int:
        return 3 if self.dataset == "mvtec" and not self.seed_grayscale else 1

    @property
    def input_low(self) -> float:
        """The lower end of the model's input range: −1 for Normalize(0.5, 0.5) MVTec inputs, else 0."""
        return -1.0 if self.dataset == "mvtec" and self.input_range == "seed" and not self.seed_grayscale else 0.0

    @property
    def recon_is_logits(self) -> bool:
        """Whether the decoder's output is Bernoulli logits (sigmoid gives the reconstruction) or the
        reconstruction itself (the report's MSE on MVTec, where the pl_bolts decoder ends in a plain conv)."""
        return not (self.loss == "seed" and self.dataset == "mvtec")

    @property
    def resolved_activation(self) -> str:
        return ATTENTION_MODES[self.attention][1] if self.activation == "auto" else self.activation

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AnomalyConfig:
        return config_from_dict(cls, values)

    def replace(self, **changes: Any) -> AnomalyConfig:
        return dataclasses.replace(self, **changes)
