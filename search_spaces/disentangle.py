"""The disentanglement studies as data: Table 1 of the reproducibility report and our extensions.

Each named study lists arms (a model family with its γ/λ/β grid); seeds are a grid axis of the study.
``trials()`` expands a study into flat trial dicts (science config + loop config); the study system turns
them into one Ray ``grid_search``. This file is the only place Table 1 lives.
``quick_study`` (``--quick``) and ``with_grid`` (``--grid`` and the ``--gamma``/``--lambda-ad``/``--beta``/``--lr``
flags) derive a study from a named one.
``trial_configs`` parses a flat trial into typed configs (``resolved_params``: every field it ran with;
``config_key``: the hash that groups its seeds); ``RANGES``/``optuna_space`` are the Optuna search space and
``METRIC_DEFAULTS`` what ASHA and Optuna optimise unless ``--metric`` says otherwise.

Table 1 (150,000 iterations, batch 64, Adam 1e-4 (0.9, 0.999); discriminator Adam 1e-4 (0.5, 0.9), seeds
{1, 2}, z = 10): exp1 = FactorVAE and AD-FactorVAE, γ ∈ {10, 20, 30, 40, 50}, λ = 1; exp2 = AD-FactorVAE,
γ ∈ {5, 15, 25, 35, 45}, λ = 1; exp3 = AD-FactorVAE, γ ∈ {10, …, 50}, λ ∈ {0.5, 1.5}.
Extensions: ``lambda_scan`` (L_AD ∈ [0, 1] against ~50–80 nats of ELBO, so λ ≤ 1.5 may not matter; one
public reproduction went to λ = 80), ``betavae`` (Kim & Mnih's β grid) and ``adlayer`` (issue 11: AD-FactorVAE
γ = 40, λ ∈ {10, 40} × the L_AD layer × the pair policy; its ``axes`` win over a protocol's values for them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from search_spaces.common import cartesian, check_grid_keys, config_hash, expand_grid, labels_of, science_part
from vae_attention.config import config_to_dict
from vae_attention.errors import ConfigError
from vae_attention.training.disentangle import DisentangleConfig
from vae_attention.training.loop import Schedule

TABLE1_GAMMAS = (10.0, 20.0, 30.0, 40.0, 50.0)
TABLE1_SEEDS = (1, 2)
# The encoder convs of the default (kim_mnih) dSprites VAE: the layers the adlayer ablation puts L_AD at.
ADLAYER_LAYERS = ("encoder.0", "encoder.2", "encoder.4", "encoder.6")

# Cadences: a full dlib metric is ~1 M images drawn (~0.5 M encodes, minutes on CPU), so evaluate rarely.
STUDY_LOOP = dict(iterations=150_000, report_every=500, checkpoint_every=5_000, eval_every=10_000)

# --quick's loop (``quick_study`` shrinks the grid): 50 iterations, a small metric once at the end. Sized so
# the README's quick sweep ends within 2 minutes on 2 cores: AD-FactorVAE (paper protocol: 10 maps, all pairs)
# runs ~0.8 it/s on its one thread there, and each metric vote encodes a batch on that thread.
QUICK_LOOP = dict(
    iterations=50, report_every=10, checkpoint_every=50, eval_every=50,
    metric_num_train=150, metric_num_eval=100, metric_num_variance=2000,
    seed_metric_batch_size=50, seed_metric_votes=100, figure_images=4,
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
    axes: dict[str, tuple] = field(default_factory=dict)  # further grid axes over config fields (e.g. adlayer)

    def trials(self, seeds: tuple[int, ...] | None = None, overrides: dict[str, Any] | None = None) -> list[dict]:
        """Flat trial configs: every arm config × every point of ``axes`` × every seed, plus ``loop`` and
        ``overrides``; no duplicates."""
        extra = cartesian(self.axes) if self.axes else [{}]
        # an axis wins over the loop (``--grid iterations=…``); no study axis is a loop key otherwise
        points = ({**cfg, **self.loop, **point} for arm in self.arms for cfg in arm.configs() for point in extra)
        # the axes are what the experiment varies: a protocol's (or --set's) value for an axis key does not apply
        overrides = {k: v for k, v in (overrides or {}).items() if k not in self.axes}
        return expand_grid(points, tuple(seeds or self.seeds), overrides)


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
        # issue 11: where L_AD is computed and which maps it compares; kim_mnih encoder convs (64², 32², 16², 8²
        # maps at the L_AD layer's output: 32×32 … 4×4)
        DisentangleStudy("adlayer", "Ablation: AD-FactorVAE γ=40, λ ∈ {10, 40} × attention layer (each encoder conv) "
                                    "× pair policy (consecutive_dims, all_pairs, random_pair)",
                         (_ad((40.0,), (10.0, 40.0)),),
                         axes={"attention_layer": ADLAYER_LAYERS,
                               "pairs": ("consecutive_dims", "all_pairs", "random_pair")}),
    ]
}
STUDIES["all"] = DisentangleStudy(
    "all", "Every study above (identical trials run once)",
    tuple(arm for name in ("exp1", "exp2", "exp3", "lambda_scan", "betavae") for arm in STUDIES[name].arms),
)
# --grid: γ, λ and β are values of the arms that use them; every other field is an axis over all trials
ARM_VALUES = {"gamma": ("gammas", ("factorvae", "ad_factorvae")), "lambda_ad": ("lambdas", ("ad_factorvae",)),
              "beta": ("betas", ("betavae",))}


def quick_study(study: DisentangleStudy) -> DisentangleStudy:
    """``--quick`` shrinks the experiment: the same models (arms), each arm's first γ/λ/β value, the first value
    of each further axis, the first seed, and ``QUICK_LOOP`` (exp1: FactorVAE and AD-FactorVAE at γ=10, λ=1)."""
    arms = tuple(Arm(a.model, a.gammas[:1], a.lambdas[:1], a.betas[:1]) for a in study.arms)
    return dataclasses.replace(study, name=f"{study.name}-quick", description=f"{study.description} (--quick)",
                               arms=arms, seeds=study.seeds[:1], loop=dict(QUICK_LOOP),
                               axes={k: v[:1] for k, v in study.axes.items()})


def with_grid(study: DisentangleStudy, grid: dict[str, tuple]) -> DisentangleStudy:
    """``study`` with the axes of ``grid`` replaced (values as given; the trials are typed later).

    ``gamma`` replaces the γ values of the FactorVAE and AD-FactorVAE arms, ``lambda_ad`` the λ values of the
    AD-FactorVAE arms, ``beta`` the β values of the β-VAE arms (one-line ConfigError if the experiment has no
    such arm); any other config field becomes a grid axis over every trial, replacing the study's own axis of
    that key. ``seed`` (use ``--seeds``) and ``model`` (use ``--experiment``) are not grid keys.
    """
    check_grid_keys(grid, CONFIG_KEYS, {"seed": "seeds are given with --seeds",
                                        "model": "the models are the experiment's (--experiment)"})
    arms = list(study.arms)
    for key, (attribute, models) in ARM_VALUES.items():
        if key not in grid:
            continue
        if not any(arm.model in models for arm in arms):
            raise ConfigError(f"{key} applies to {' and '.join(models)}, which experiment {study.name} does not "
                              f"train (its models: {', '.join(dict.fromkeys(a.model for a in arms))})")
        arms = [dataclasses.replace(a, **{attribute: tuple(grid[key])}) if a.model in models else a for a in arms]
    axes = {**study.axes, **{k: tuple(v) for k, v in grid.items() if k not in ARM_VALUES}}
    return dataclasses.replace(study, arms=tuple(arms), axes=axes)


def get_study(name: str, quick: bool = False) -> DisentangleStudy:
    if name not in STUDIES:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(STUDIES)}")
    return quick_study(STUDIES[name]) if quick else STUDIES[name]


CONFIG_KEYS = {f.name for f in dataclasses.fields(DisentangleConfig)}


def trial_configs(trial: dict[str, Any]) -> tuple[DisentangleConfig, Schedule]:
    """The typed config of a flat trial dict and its schedule; unknown keys and bad values raise ConfigError.

    The trial's ``protocol`` label is not a config field and is left out (see ``search_spaces.common``)."""
    trial = science_part(trial)
    unknown = sorted(set(trial) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(CONFIG_KEYS)}")
    config = DisentangleConfig.from_dict(trial)
    return config, config.schedule


def resolved_params(trial: dict[str, Any]) -> dict[str, Any]:
    """Every field of the typed config (science, schedule, evaluation sizes) and the ``protocol`` label."""
    return {**config_to_dict(trial_configs(trial)[0]), **labels_of(trial)}


def typed_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial's own keys with values coerced to their fields' types (so params log as 40.0, not '40')."""
    return {k: v for k, v in resolved_params(trial).items() if k in trial}


def config_key(trial: dict[str, Any]) -> str:
    """Stable hash of a trial's config without its seed: the key that groups seeds of one configuration."""
    return config_hash(resolved_params(trial))


# -- Optuna ----------------------------------------------------------------------------------------------------
# ASHA compares trials at every rung, so its metric must be in every report; evaluations are rarer.
METRIC_DEFAULTS = {
    "asha": ("recon_loss", "min"),
    "optuna": ("disentanglement", "max"),
    "pareto": (("disentanglement", "eval_recon_loss"), ("max", "min")),
}
# Optuna's ranges: log-uniform around Table 1's grids (γ 5–50), the λ scan (≤ 80) and Kim & Mnih's β grid.
RANGES = {
    "gamma": ("loguniform", 5.0, 100.0),
    "lambda_ad": ("loguniform", 0.1, 100.0),
    "beta": ("loguniform", 1.0, 16.0),
    "lr": ("loguniform", 1e-5, 1e-3),
}


def optuna_space(trials: list[dict[str, Any]], overrides: dict[str, Any], seeds: tuple[int, ...]):
    """The study's models as a choice, RANGES for what the user did not fix with --set; the seeds are replicates
    (every sampled configuration runs once per seed; ``study.search``), never a searched parameter.

    Returns the space and its low and high corners as trials, which are validated like grid trials.
    """
    models = sorted({t["model"] for t in trials})
    first = trials[0]  # typed; carries the loop settings and every --set override
    space: dict[str, Any] = {k: v for k, v in first.items() if k not in ("model", "gamma", "lambda_ad", "beta", "seed")}
    space.update(model=("choice", models), seed=("replicates", list(seeds)))
    applies = {"gamma": True, "lr": True, "lambda_ad": "ad_factorvae" in models, "beta": "betavae" in models}
    for key, spec in RANGES.items():
        if key in overrides:
            space[key] = first[key]
        elif applies[key]:
            space[key] = spec
        else:
            space[key] = {"lambda_ad": 0.0, "beta": 1.0}[key]
    corners = []
    for end in (1, 2):
        corner = {k: (v[end] if isinstance(v, tuple) and v[0] not in ("choice", "replicates") else v)
                  for k, v in space.items()}
        corner.update(model=models[-1], seed=seeds[0])
        corners.append(typed_trial(corner))
    return space, corners
