"""The anomaly-localisation studies as data: the report's Table 1 (first part) per data set.

MNIST: one-class on digits {1, 3} (evaluated on {7, 4, 9, 2} and {8, 5}), 200 epochs, batch 128, lr 1e-3.
UCSD Ped1: 300 epochs, batch 128, lr ∈ {1e-3, 5e-4, 1e-4}; each trial also scores the three convs the report
compared (``pixel_auroc/<layer>``), which costs evaluation only, not training.
MVTec-AD: one trial per category (15), 300 epochs, batch 16, lr 5e-4, 256×256, ResNet-18 VAE.
Adam (0.9, 0.999, 1e-8) everywhere; seeds are a grid axis.
Also here: ``grid_axes`` (axes given on the command line), ``trial_config``/``resolved_params``/``config_key``
(a flat trial typed, resolved, hashed), Optuna's ``LR_RANGE`` and ``METRIC_DEFAULTS`` (what ASHA and Optuna
optimise unless ``--metric`` says otherwise).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from search_spaces.common import cartesian, check_grid_keys, config_hash, expand_grid, labels_of, science_part
from vae_attention.config import config_to_dict
from vae_attention.data import MVTEC_CATEGORIES
from vae_attention.errors import ConfigError
from vae_attention.training.anomaly import AnomalyConfig

SEEDS = (1,)
# Evaluations run the attention maps over the whole test set (a few minutes on CPU for MVTec at 256²).
CADENCE = dict(report_every=1, checkpoint_every=10, eval_every=50)


@dataclass(frozen=True)
class AnomalyStudy:
    dataset: str
    description: str
    axes: dict[str, tuple]
    fixed: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS

    def trials(self, seeds=None, overrides=None, axes=None, quick=False) -> list[dict[str, Any]]:
        """Grid trials; ``axes`` replaces whole axes (e.g. ``{"category": ("bottle",)}``). ``quick`` shrinks the
        study's own axes to their first value (one category/digit/lr); the axes given keep all their values."""
        own = {name: values[:1] for name, values in self.axes.items()} if quick else self.axes
        grid = {**own, **(axes or {})}
        fixed = {"dataset": self.dataset, **self.fixed, **CADENCE, **(self.quick if quick else {})}
        # an axis given on the command line wins over a protocol's or the quick preset's value for its key
        overrides = {k: v for k, v in (overrides or {}).items() if k not in (axes or {})}
        return expand_grid(({**fixed, **point} for point in cartesian(grid)), tuple(seeds or self.seeds), overrides)


QUICK_COMMON = dict(epochs=2, eval_every=2, checkpoint_every=1, figure_images=4, num_bins=4096)
STUDIES: dict[str, AnomalyStudy] = {
    "mnist": AnomalyStudy(
        "mnist", "One-class MNIST (authors' ConvVAE, z=32): digit 1 vs {7,4,9,2}, digit 3 vs {8,5}",
        axes={"digit": (1, 3)}, fixed=dict(epochs=200, batch_size=128, lr=1e-3),
        quick=dict(QUICK_COMMON, max_train_images=2000, max_test_images=1000),
    ),
    "ucsd": AnomalyStudy(
        "ucsd", "UCSD Ped1 100×100 (3-conv VAE, z=32), lr ∈ {1e-3, 5e-4, 1e-4}",
        axes={"lr": (1e-3, 5e-4, 1e-4)}, fixed=dict(epochs=300, batch_size=128),
        quick=dict(QUICK_COMMON, max_train_images=1000, max_test_images=400),
    ),
    "mvtec": AnomalyStudy(
        "mvtec", "MVTec-AD per category (ResNet-18 VAE, z=32, 256×256), lr 5e-4",
        axes={"category": MVTEC_CATEGORIES}, fixed=dict(epochs=300, batch_size=16, lr=5e-4),
        quick=dict(QUICK_COMMON, image_size=64, max_train_images=200, max_test_images=100),
    ),
}


def get_study(dataset: str) -> AnomalyStudy:
    if dataset not in STUDIES:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[dataset]


def grid_axes(dataset: str, grid: dict[str, tuple]) -> dict[str, tuple]:
    """Axes that replace the study's own (``--category``/``--digit``/``--lr`` and ``--grid KEY=V1,V2``, any
    config field); ``category=all`` is the 15 MVTec-AD categories. Other category names are a user's own data
    in the MVTec layout (``custom_categories``), which the caller checks against its data folder."""
    check_grid_keys(grid, CONFIG_KEYS, {"seed": "seeds are given with --seeds", "dataset": "choose it with --dataset"})
    axes = {key: tuple(values) for key, values in grid.items()}
    if "category" in axes:
        if dataset != "mvtec":
            raise ConfigError("--category applies to --dataset mvtec only")
        if axes["category"] == ("all",):
            axes["category"] = MVTEC_CATEGORIES
    if "digit" in axes and dataset != "mnist":
        raise ConfigError("--digit applies to --dataset mnist only")
    return axes


def custom_categories(axes: dict[str, tuple]) -> tuple[str, ...]:
    """The category names of ``axes`` that are not among MVTec AD's 15 (anomalib's Folder data, in MVTec's layout)."""
    return tuple(c for c in axes.get("category", ()) if c not in MVTEC_CATEGORIES)


CONFIG_KEYS = {f.name for f in dataclasses.fields(AnomalyConfig)}


def trial_config(trial: dict[str, Any]) -> AnomalyConfig:
    """The typed config of a flat trial dict; unknown keys and bad values raise ConfigError.

    The trial's ``protocol`` label is not a config field and is left out (see ``search_spaces.common``)."""
    return AnomalyConfig.from_dict(science_part(trial))


def resolved_params(trial: dict[str, Any]) -> dict[str, Any]:
    """Every config field as the trial ran it, dataset defaults (image size, layer, activation) resolved."""
    config = trial_config(trial)
    resolved = config_to_dict(config)
    resolved.update(image_size=config.resolved_image_size, attention_layer=config.resolved_layer,
                    activation=config.resolved_activation, score=config.resolved_score,
                    upsample_first="yes" if config.resolved_upsample_first else "no", **labels_of(trial))
    return resolved


def typed_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial's own keys with values coerced to their fields' types (raises ConfigError for bad ones)."""
    return {k: v for k, v in resolved_params(trial).items() if k in trial}


def config_key(trial: dict[str, Any]) -> str:
    return config_hash(resolved_params(trial))


# -- Optuna ----------------------------------------------------------------------------------------------------
# ASHA needs a metric in every report (the training loss); Optuna can use the final evaluation.
METRIC_DEFAULTS = {"asha": ("loss", "min"), "optuna": ("pixel_auroc", "max")}
LR_RANGE = ("loguniform", 1e-5, 1e-2)


def optuna_space(trials: list[dict[str, Any]], seeds: tuple[int, ...], fixed_lr: bool):
    """Optuna searches the learning rate (log-uniform) for ONE category/digit at a time; seeds are replicates."""
    varying = sorted(k for k in trials[0] if k not in ("lr", "seed") and len({str(t[k]) for t in trials}) > 1)
    if varying:
        raise ConfigError(f"--search optuna searches one configuration at a time, but {varying} vary; "
                          "pass a single --category/--digit")
    space = {k: v for k, v in trials[0].items() if k != "seed"}
    space["seed"] = ("replicates", list(seeds))
    if not fixed_lr:
        space["lr"] = LR_RANGE
    corners = [{**trials[0], "lr": space["lr"][end] if not fixed_lr else trials[0]["lr"]} for end in (1, 2)]
    return space, corners
