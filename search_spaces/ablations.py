"""Evaluation-time ablations as data: which config fields a re-score may change, and the report's grids.

A re-score (``python -m study.evaluate``) loads a finished trial's weights and recomputes its evaluation under
changed settings, so only fields that the evaluation reads and training never reads may be gridded
(``EVALUATION_FIELDS``); anything else would describe a model that was never trained.

Anomaly: the attention layer, the attention mode and its parts (activation, activation order, score), the
gradient normalisation, the metric size (threshold bins), the UCSD ground-truth policy, the MVTec evaluation
set, the MNIST outlier digits, and the figure's image count. Disentanglement: the metric sizes of both
FactorVAE metric variants, the figure's image count, and the figure's attention layer — which for
AD-FactorVAE is also where L_AD was computed during training, so a re-score at another layer draws the
figure there without changing what was trained (the metrics do not read it).

``REPORT_GRIDS``: the reproducibility report's ablation (Sec. 5) per data set — activation relu/abs/none ×
gradient normalisation none/batch/per-image × attention layer × score (Σμ, mean of per-dimension maps, the
paper's normal difference). Layers: UCSD its three convs, MVTec-AD one conv at the end of each of ResNet-18's
stages 2–4 (the report compared stages; the last conv of a stage is the one a stage's output comes from),
MNIST its two convs. 3 × 3 × 3 × 3 = 81 combinations per trial (MNIST 54).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from search_spaces.common import cartesian
from vae_attention.errors import ConfigError
from vae_attention.models import UCSD_ATTENTION_LAYERS

EVALUATION_FIELDS: dict[str, tuple[str, ...]] = {
    "anomaly": ("attention_layer", "attention", "activation", "normalize_grads", "score", "upsample_first",
                "num_bins", "gt_policy", "eval_set", "eval_digits", "figure_images"),
    "disentangle": ("attention_layer", "metric_batch_size", "metric_num_train", "metric_num_eval",
                    "metric_num_variance", "seed_metric_batch_size", "seed_metric_votes", "figure_images"),
}

_REPORT_COMMON = {
    "activation": ("relu", "abs", "none"),
    "normalize_grads": ("none", "batch", "per_image"),
}
_REPORT_SCORES = ("sum", "mean_per_dim", "normal_diff")
REPORT_LAYERS: dict[str, tuple[str, ...]] = {
    "ucsd": UCSD_ATTENTION_LAYERS,
    "mvtec": ("encoder.layer2.1.conv2", "encoder.layer3.1.conv2", "encoder.layer4.1.conv2"),
    "mnist": ("encoder.0", "encoder.2"),
}
REPORT_GRIDS: dict[str, dict[str, tuple]] = {
    dataset: {**_REPORT_COMMON, "attention_layer": layers, "score": _REPORT_SCORES}
    for dataset, layers in REPORT_LAYERS.items()
}
ABLATIONS = ("report",)
TUPLE_FIELDS = ("eval_digits",)  # grid values separate with ","; these fields' own elements join with "+"


def parse_grid(items: list[str] | None) -> dict[str, tuple[str, ...]]:
    """``["KEY=V1,V2", ...]`` → {KEY: (V1, V2)} in the order given; values stay strings (the config types them).

    Values of tuple fields (``TUPLE_FIELDS``) join their elements with ``+`` (``eval_digits=7+4,9``)."""
    grid: dict[str, tuple[str, ...]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key or not parts:
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2,...")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        if key in TUPLE_FIELDS:  # a tuple value joins its elements with "+": eval_digits=7+4+9+2,8+5
            parts = tuple(p.replace("+", ",") for p in parts)
        grid[key] = tuple(dict.fromkeys(parts))
    return grid


def check_grid_keys(kind: str, grid: dict[str, tuple], config_fields: set[str]) -> None:
    """One-line ConfigError for a key that is not a field of the study's config, or one that training reads."""
    allowed = EVALUATION_FIELDS[kind]
    for key in grid:
        if key not in config_fields:
            raise ConfigError(f"--grid {key}: not a config field of the {kind} study; evaluation-time fields: "
                              f"{', '.join(allowed)}")
        if key not in allowed:
            raise ConfigError(f"--grid {key}: a training field (changing it needs a new training run); "
                              f"evaluation-time fields of the {kind} study: {', '.join(allowed)}")


def report_grid(dataset: str) -> dict[str, tuple]:
    if dataset not in REPORT_GRIDS:
        raise ConfigError(f"--ablation report has no grid for dataset {dataset!r}; it covers "
                          f"{', '.join(REPORT_GRIDS)}")
    return dict(REPORT_GRIDS[dataset])


def combinations(grid: dict[str, tuple]) -> list[dict[str, Any]]:
    """Every point of the grid (the last key varies fastest); one empty point for an empty grid."""
    return cartesian(grid) if grid else [{}]


def settings_key(settings: dict[str, Any]) -> str:
    """Stable 16-hex hash of the changed settings (typed values): the idempotency key of a re-score."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]
