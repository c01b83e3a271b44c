"""The disentanglement studies as data: Table 1 of the reproducibility report and our extensions.

Each named study lists arms (a model family with its γ/λ/β grid); seeds are a grid axis of the study.
``trials()`` expands a study into flat trial dicts (science config + loop config); the study system turns
them into one Ray ``grid_search``. This file is the only place Table 1 lives.

Table 1 (150,000 iterations, batch 64, Adam 1e-4 (0.9, 0.999); discriminator Adam 1e-4 (0.5, 0.9), seeds
{1, 2}, z = 10): exp1 = FactorVAE and AD-FactorVAE, γ ∈ {10, 20, 30, 40, 50}, λ = 1; exp2 = AD-FactorVAE,
γ ∈ {5, 15, 25, 35, 45}, λ = 1; exp3 = AD-FactorVAE, γ ∈ {10, …, 50}, λ ∈ {0.5, 1.5}.
Extensions: ``lambda_scan`` (L_AD ∈ [0, 1] against ~50–80 nats of ELBO, so λ ≤ 1.5 may not matter; one
public reproduction went to λ = 80) and ``betavae`` (Kim & Mnih's β grid).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from search_spaces.common import config_hash
from vae_attention.errors import ConfigError
from vae_attention.training import DisentangleConfig, LoopConfig

TABLE1_GAMMAS = (10.0, 20.0, 30.0, 40.0, 50.0)
TABLE1_SEEDS = (1, 2)

# Cadences: a full dlib metric is ~1 M images drawn (~0.5 M encodes, minutes on CPU), so evaluate rarely.
STUDY_LOOP = dict(iterations=150_000, report_every=500, checkpoint_every=5_000, eval_every=10_000)

# --quick: both model families, one γ, one seed, ~100 iterations, a small metric once at the end.
QUICK_LOOP = dict(
    iterations=100, report_every=20, checkpoint_every=100, eval_every=100,
    metric_num_train=300, metric_num_eval=200, metric_num_variance=2000,
    seed_metric_batch_size=50, seed_metric_votes=200, figure_images=4,
)


@dataclass(frozen=True)
class Arm:
    """One model family's grid. λ applies to AD-FactorVAE only, β to β-VAE only."""

    model: str
    gammas: tuple[float, ...] = ()
    lambdas: tuple[float, ...] = (0.0,)
    betas: tuple[float, ...] = (1.0,)

    def configs(self) -> list[dict[str, Any]]:
        if self.model == "betavae":
            return [dict(model="betavae", gamma=0.0, lambda_ad=0.0, beta=b) for b in self.betas]
        lambdas = self.lambdas if self.model == "ad_factorvae" else (0.0,)
        return [dict(model=self.model, gamma=g, lambda_ad=lam, beta=1.0) for lam in lambdas for g in self.gammas]


@dataclass(frozen=True)
class DisentangleStudy:
    name: str
    description: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...] = TABLE1_SEEDS
    loop: dict[str, Any] = field(default_factory=lambda: dict(STUDY_LOOP))

    def trials(self, seeds: tuple[int, ...] | None = None, overrides: dict[str, Any] | None = None) -> list[dict]:
        """Flat trial configs: every arm config × every seed, plus ``loop`` and ``overrides``; no duplicates."""
        seen, trials = set(), []
        for arm in self.arms:
            for cfg in arm.configs():
                for seed in seeds or self.seeds:
                    trial = {**cfg, **self.loop, "seed": int(seed), **(overrides or {})}
                    key = json.dumps(trial, sort_keys=True)
                    if key not in seen:
                        seen.add(key)
                        trials.append(trial)
        return trials


def _ad(gammas, lambdas=(1.0,)) -> Arm:
    return Arm("ad_factorvae", gammas=tuple(gammas), lambdas=tuple(lambdas))


STUDIES: dict[str, DisentangleStudy] = {
    s.name: s
    for s in [
        DisentangleStudy("exp1", "Table 1 exp1: FactorVAE vs AD-FactorVAE (λ=1), γ ∈ {10..50}",
                         (Arm("factorvae", gammas=TABLE1_GAMMAS), _ad(TABLE1_GAMMAS))),
        DisentangleStudy("exp2", "Table 1 exp2: AD-FactorVAE (λ=1), γ ∈ {5,15,25,35,45}",
                         (_ad((5.0, 15.0, 25.0, 35.0, 45.0)),)),
        DisentangleStudy("exp3", "Table 1 exp3: AD-FactorVAE, γ ∈ {10..50} × λ ∈ {0.5, 1.5}",
                         (_ad(TABLE1_GAMMAS, (0.5, 1.5)),)),
        DisentangleStudy("lambda_scan", "Extension: AD-FactorVAE γ=40, λ ∈ {1, 10, 40, 80}",
                         (_ad((40.0,), (1.0, 10.0, 40.0, 80.0)),)),
        DisentangleStudy("betavae", "Baseline: β-VAE, β ∈ {1, 2, 4, 6, 8, 16} (Kim & Mnih's grid)",
                         (Arm("betavae", betas=(1.0, 2.0, 4.0, 6.0, 8.0, 16.0)),)),
    ]
}
STUDIES["all"] = DisentangleStudy(
    "all", "Every study above (identical trials run once)",
    tuple(arm for name in ("exp1", "exp2", "exp3", "lambda_scan", "betavae") for arm in STUDIES[name].arms),
)
QUICK = DisentangleStudy(
    "quick", "Smoke preset: FactorVAE and AD-FactorVAE, γ=40, λ=1, one seed, 100 iterations",
    (Arm("factorvae", gammas=(40.0,)), _ad((40.0,))), seeds=(1,), loop=dict(QUICK_LOOP),
)


def get_study(name: str, quick: bool = False) -> DisentangleStudy:
    if name not in STUDIES:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(STUDIES)}")
    if quick:
        return dataclasses.replace(QUICK, name=f"{name}-quick")
    return STUDIES[name]


_SCIENCE_KEYS = {f.name for f in dataclasses.fields(DisentangleConfig)}
_LOOP_KEYS = {f.name for f in dataclasses.fields(LoopConfig)}
CONFIG_KEYS = _SCIENCE_KEYS | _LOOP_KEYS


def split_trial(trial: dict[str, Any]) -> tuple[DisentangleConfig, LoopConfig]:
    """Typed (science, loop) configs of a flat trial dict; unknown keys and bad values raise ConfigError."""
    unknown = sorted(set(trial) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(CONFIG_KEYS)}")
    science = DisentangleConfig.from_dict({k: v for k, v in trial.items() if k in _SCIENCE_KEYS})
    loop = LoopConfig.from_dict({k: v for k, v in trial.items() if k in _LOOP_KEYS})
    return science, loop


def config_key(trial: dict[str, Any]) -> str:
    """Stable hash of a trial's config without its seed: the key that groups seeds of one configuration."""
    science, loop = split_trial(trial)
    return config_hash({**dataclasses.asdict(science), **dataclasses.asdict(loop)})
