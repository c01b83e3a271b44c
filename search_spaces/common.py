"""Helpers every study's search space shares."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

# Where the data lives, which seed ran, and how often it reported, checkpointed, evaluated or drew figures
# do not change what a configuration is (metric sizes do: they change the measured value).
NOT_IN_CONFIG_KEY = ("seed", "data_dir", "report_every", "checkpoint_every", "eval_every", "figure_images")


def config_hash(resolved: dict[str, Any]) -> str:
    """Stable 12-hex hash of a resolved config without its seed: the key that groups a configuration's seeds."""
    kept = {k: v for k, v in resolved.items() if k not in NOT_IN_CONFIG_KEY}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=list).encode()).hexdigest()[:12]


def expand_grid(axes: dict[str, tuple], fixed: dict[str, Any], seeds: tuple[int, ...],
                overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Cartesian product of ``axes`` × seeds, each with ``fixed`` and then ``overrides`` applied; no duplicates."""
    names = list(axes)
    seen, trials = set(), []
    for values in itertools.product(*(axes[n] for n in names)):
        for seed in seeds:
            trial = {**fixed, **dict(zip(names, values, strict=True)), "seed": int(seed), **(overrides or {})}
            key = json.dumps(trial, sort_keys=True, default=list)
            if key not in seen:
                seen.add(key)
                trials.append(trial)
    return trials
