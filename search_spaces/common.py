"""Helpers every study's search space shares: the one grid expander, the config key, Ray's params key, the checks of
``--grid`` keys and the removal of repeated trials."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any

from vae_attention.errors import ConfigError

# The trial's whole (flat) config sits under this key of Ray's config dict, as one grid_search value.
PARAMS_KEY = "params"

# Where the data lives, which seed ran, and how often it reported, checkpointed, evaluated or drew figures
# do not change what a configuration is (metric sizes do: they change the measured value).
NOT_IN_CONFIG_KEY = ("seed", "data_dir", "report_every", "checkpoint_every", "eval_every", "figure_images")
# Keys of a trial dict that are not fields of the science config: the protocol label (``paper``, ``seed+custom``)
# is provenance, logged as a param and part of the config key, but the training code never reads it.
LABEL_KEYS = ("protocol",)


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's flat config (a copy) out of the config dict Ray hands the trainable."""
    return dict(config[PARAMS_KEY])


def science_part(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial without its label keys: what the typed science config is built from."""
    return {k: v for k, v in trial.items() if k not in LABEL_KEYS}


def labels_of(trial: dict[str, Any]) -> dict[str, Any]:
    """The label keys the trial carries (none for trials made before protocols existed)."""
    return {k: trial[k] for k in LABEL_KEYS if k in trial}


def config_hash(resolved: dict[str, Any]) -> str:
    """Stable 12-hex hash of a resolved config without its seed: the key that groups a configuration's seeds."""
    kept = {k: v for k, v in resolved.items() if k not in NOT_IN_CONFIG_KEY}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=list).encode()).hexdigest()[:12]


def cartesian(axes: dict[str, tuple]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in order (the last axis varies fastest)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]


def expand_grid(points: Iterable[dict[str, Any]], seeds: tuple[int, ...],
                overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each point × each seed, then ``overrides`` applied; identical trials kept once, in first-seen order."""
    seen, trials = set(), []
    for point in points:
        for seed in seeds:
            trial = {**point, "seed": int(seed), **(overrides or {})}
            key = json.dumps(trial, sort_keys=True, default=list)
            if key not in seen:
                seen.add(key)
                trials.append(trial)
    return trials


def check_grid_keys(grid: dict[str, tuple], fields: set[str], chosen_elsewhere: dict[str, str]) -> None:
    """One-line ConfigError for a ``--grid`` key that is not a field of the study's config, or that another
    option chooses (``chosen_elsewhere``: key → what to use instead, e.g. ``seed`` → ``--seeds``)."""
    for key in grid:
        if key in chosen_elsewhere:
            raise ConfigError(f"--grid {key}: {chosen_elsewhere[key]}")
        if key not in fields:
            raise ConfigError(f"--grid {key}: not a config field of this study; known keys: "
                              f"{', '.join(sorted(fields))}")


def drop_repeats(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Typed trials with repeats removed, in first-seen order (``--grid gamma=10,10.0`` is one value once typed)."""
    seen, kept = set(), []
    for trial in trials:
        key = json.dumps(trial, sort_keys=True, default=list)
        if key not in seen:
            seen.add(key)
            kept.append(trial)
    return kept
