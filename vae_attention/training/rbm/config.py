"""The typed configuration of one RBM run: a greedily trained stack of RBMs on one MNIST digit, its attention maps
under both constructions, and the anomaly study's MNIST VAE trained in the same trial for the comparison.

Defaults are our construction (the ``paper`` protocol: the paper's Grad-CAM recipe carried over to RBMs, see
``vae_attention.rbm_attention``) on the report's training settings, read from its code
(Carmoondedraak/FACT-2021, ``rbm_anomaly_maps/StackRBMs.py``): sizes 784-784-625-484-324-256-169-64-36, CD-1,
SGD lr 0.1, batch 64, 40 epochs per layer, images binarised by a Bernoulli draw, binary hidden units, maps of
layer 3. The report's construction is ``rbm_map="seed"`` with τ = 0.1; named bundles of these values (the
``paper`` and ``seed`` protocols) live in ``search_spaces.rbm.RBM_PROTOCOLS``.

Schedule, in epochs (the loop's unit): the stack trains bottom-up, layer ℓ for ``epochs_per_layer`` epochs on
the hidden probabilities of layers 0..ℓ−1, then the VAE for ``vae_epochs`` epochs (the anomaly study's MNIST
ConvVAE under ``AnomalyConfig``'s defaults: ELBO, Adam 1e-3, batch 128, the map of ``vae_attention`` mode, by
default ``authors``: |upsampled grad-weighted map of Σμ| at ``encoder.2``); ``total_epochs`` = layers ×
epochs_per_layer + vae_epochs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from vae_attention.config import check_choices, config_from_dict
from vae_attention.errors import ConfigError
from vae_attention.models.rbm import REPORT_RBM_SIZES, HiddenKind
from vae_attention.training.anomaly.config import AttentionMode
from vae_attention.training.loop import Schedule, check_cadences

RBMMap = Literal["gradcam", "seed"]
MapActivation = Literal["relu", "abs", "none"]
REPORT_MAP_LAYER = 3  # the report's code: StackRBMs(..., layer_idx=3)


@dataclass(frozen=True)
class RBMConfig:
    digit: int = 1  # the inlier digit (training set and pasted test set)
    eval_digits: tuple[int, ...] = ()  # outlier digits; () = the report's choice (1 → 7,4,9,2; 3 → 8,5) or all others
    sizes: tuple[int, ...] = REPORT_RBM_SIZES  # visible units, then the hidden units of each layer
    hidden: HiddenKind = "binary"  # {0, 1} (the report's code) or {−1, +1} (its text)
    k: int = 1  # Gibbs sweeps per CD update
    persistent: bool = False  # PCD: chains carried across updates (and checkpoints)
    lr: float = 0.1  # SGD on the CD surrogate
    momentum: float = 0.0
    init_std: float = 0.01  # W ~ N(0, init_std²)
    epochs_per_layer: int = 40
    batch_size: int = 64
    sample_input: bool = True  # Bernoulli-binarise the images before each update (the report's code)
    rbm_map: RBMMap = "gradcam"  # the construction whose metrics are logged unsuffixed
    rbm_layer: int = REPORT_MAP_LAYER  # the layer whose hidden units are scored; negative counts from the top
    temperature: float = 0.5  # τ of the relaxation (both constructions)
    n_samples: int = 8  # relaxed samples averaged in the gradcam score
    straight_through: bool = False
    map_activation: MapActivation = "relu"  # gradcam only; the seed construction ends in a sigmoid
    vae_epochs: int = 200  # the anomaly study's MNIST VAE (ConvVAE, z = 32, Adam 1e-3, batch 128)
    vae_attention: AttentionMode = "authors"  # the VAE map: the anomaly study's attention modes
    vae_lr: float = 1e-3
    vae_batch_size: int = 128
    max_train_images: int = 0  # 0 = all; smaller for quick runs and tests
    max_test_images: int = 0  # per test set (pasted inliers; inliers + outlier digits)
    paste_seed: int = 0  # the pasted test set's seed (the same set for every trial)
    heldout_images: int = 500  # images of each side of the free-energy gap
    num_bins: int = 65_536
    report_every: int = 1
    checkpoint_every: int = 10
    eval_every: int = 40
    figure_images: int = 6
    data_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        checks = [
            (self.digit in range(10), f"digit must be 0..9, got {self.digit}"),
            (len(self.sizes) >= 2 and all(s >= 1 for s in self.sizes),
             f"sizes need a visible and at least one hidden size, all positive, got {self.sizes}"),
            (not self.sizes or self.sizes[0] == 784, f"sizes must start with 784 (28 × 28 MNIST pixels), got "
                                                     f"{self.sizes[:1]}"),
            (self.k >= 1, f"k must be >= 1, got {self.k}"),
            (self.lr > 0 and self.vae_lr > 0, "lr and vae_lr must be > 0"),
            (0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}"),
            (self.init_std > 0, f"init_std must be > 0, got {self.init_std}"),
            (self.epochs_per_layer >= 1, f"epochs_per_layer must be >= 1, got {self.epochs_per_layer}"),
            (self.vae_epochs >= 0, f"vae_epochs must be >= 0, got {self.vae_epochs}"),
            (self.batch_size >= 1 and self.vae_batch_size >= 1, "batch_size and vae_batch_size must be >= 1"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.n_samples >= 1, f"n_samples must be >= 1, got {self.n_samples}"),
            (self.max_train_images >= 0 and self.max_test_images >= 0, "max_*_images must be >= 0"),
            (self.heldout_images >= 1, f"heldout_images must be >= 1, got {self.heldout_images}"),
            (self.num_bins >= 2, f"num_bins must be >= 2, got {self.num_bins}"),
            (self.figure_images >= 1, f"figure_images must be >= 1, got {self.figure_images}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        layers = len(self.sizes) - 1
        if not -layers <= self.rbm_layer < layers:
            raise ConfigError(f"rbm_layer={self.rbm_layer} is outside the {layers} layers of sizes "
                              f"{'-'.join(map(str, self.sizes))}")
        units = self.sizes[self.map_layer + 1]
        if math.isqrt(units) ** 2 != units:  # the seed construction shows the layer as a √n × √n grid
            raise ConfigError(f"rbm_layer {self.map_layer} has {units} hidden units, not a square number; the seed "
                              "construction needs one (choose another rbm_layer or sizes)")
        check_cadences(self.schedule, "total epochs")

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def map_layer(self) -> int:
        """``rbm_layer`` as a non-negative index."""
        return self.rbm_layer % self.layers

    @property
    def stack_epochs(self) -> int:
        return self.layers * self.epochs_per_layer

    @property
    def total_epochs(self) -> int:
        return self.stack_epochs + self.vae_epochs

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.total_epochs, self.report_every, self.checkpoint_every, self.eval_every)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RBMConfig:
        return config_from_dict(cls, values)

    def replace(self, **changes: Any) -> RBMConfig:
        return dataclasses.replace(self, **changes)
