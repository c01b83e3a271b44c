"""How a sweep allocates trials: the study's exact grid (FIFO), ASHA early stopping, or an Optuna search.

- ``fifo``: every grid trial runs to the end, in order, as resources allow.
- ``asha``: the same grid under Ray's ``ASHAScheduler``: at rungs (grace period × reduction factor^k, in
  the study's units: iterations or epochs) the worst trials by ``--metric`` stop early. The default metric is
  one that every report carries (``recon_loss`` for disentanglement, ``loss`` for anomaly models), so every
  rung can compare every trial. Ray 2.60 does not restore ASHA's rung records on ``--resume``: a resumed
  ASHA sweep continues the unfinished trials from their checkpoints with empty rungs, so rungs the
  trials had already passed are not re-judged and the next rungs compare only the trials that report
  after the resume.
- ``optuna``: Ray's ``OptunaSearch`` (TPE, seeded by ``--search-seed``) samples ``--num-samples`` trials from
  the study's ranges (log-uniform γ, λ, lr; seeds as a choice), because it cannot take a ``grid_search``.
  ``--objective pareto`` makes it multi-objective: disentanglement ↑ and held-out reconstruction ↓. Its
  state is saved with Ray's experiment state, so ``--resume`` continues the search where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from vae_attention.errors import ConfigError

SCHEDULERS = ("fifo", "asha", "optuna")
OBJECTIVES = ("single", "pareto")


@dataclass(frozen=True)
class SearchSettings:
    scheduler: str = "fifo"
    metric: str | None = None
    mode: str | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    num_samples: int = 10
    objective: str = "single"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "pareto" and self.scheduler != "optuna":
            raise ConfigError("--objective pareto needs --scheduler optuna")
        if self.mode not in (None, "min", "max"):
            raise ConfigError(f"--mode must be min or max, got {self.mode!r}")
        if self.grace_period < 1 or self.reduction_factor < 2 or self.num_samples < 1:
            raise ConfigError("--grace-period must be >= 1, --reduction-factor >= 2, --num-samples >= 1")


def resolve_metric(settings: SearchSettings, defaults: dict[str, tuple[str, str]]) -> tuple[Any, Any]:
    """The metric(s) and mode(s) the scheduler or searcher optimises: the user's, else the study's default."""
    if settings.scheduler == "fifo":
        return None, None
    if settings.objective == "pareto":
        metrics, modes = defaults["pareto"]
        return list(metrics), list(modes)
    metric, mode = defaults[settings.scheduler]
    return settings.metric or metric, settings.mode or mode


def _domain(spec):
    kind, *args = spec
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "choice":
        return tune.choice(list(args[0]))
    raise ConfigError(f"unknown range kind {kind!r}")


def evaluation_optuna_search(**kwargs):
    """Ray's ``OptunaSearch`` that only records reports carrying the objective (evaluations, the final one).

    Ray's searcher reads the objective from every intermediate report, but ours exist only at evaluations;
    Optuna's objective is the trial's final result, which always has them.
    """
    # imported here: it imports optuna (~0.5 s), which only an Optuna sweep needs
    from ray.tune.search.optuna import OptunaSearch

    class EvaluationOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if all(m in result for m in metrics):
                super().on_trial_result(trial_id, result)

    return EvaluationOptunaSearch(**kwargs)


def tune_setup(settings: SearchSettings, metric, mode, *, trials: list[dict], space: dict | None,
               total: int, time_attr: str, max_concurrent: int, params_key: str) -> tuple[dict, dict]:
    """``(param_space, TuneConfig kwargs)`` for the chosen scheduler."""
    kwargs: dict[str, Any] = {"max_concurrent_trials": max_concurrent or None}
    if settings.scheduler == "optuna":
        # sorted: the sampler draws parameters in this order, so a saved and reloaded space samples the same
        param_space = {params_key: {k: (_domain(v) if isinstance(v, tuple) else v) for k, v in sorted(space.items())}}
        kwargs.update(search_alg=evaluation_optuna_search(metric=metric, mode=mode, seed=settings.seed),
                      num_samples=settings.num_samples)
        return param_space, kwargs
    param_space = {params_key: tune.grid_search(trials)}
    if settings.scheduler == "asha":
        kwargs["scheduler"] = ASHAScheduler(time_attr=time_attr, metric=metric, mode=mode, max_t=total,
                                            grace_period=settings.grace_period,
                                            reduction_factor=settings.reduction_factor)
    return param_space, kwargs


def describe(settings: SearchSettings, metric, mode, space: dict | None, total: int, unit: str) -> list[str]:
    """Dry-run lines for a scheduler or search (a grid is listed trial by trial instead)."""
    if settings.scheduler == "asha":
        rungs, t = [], settings.grace_period
        while t < total:
            rungs.append(t)
            t *= settings.reduction_factor
        return [f"scheduler: ASHA on {metric} ({mode}); rungs at {unit} {rungs} of {total}: at each rung the "
                f"worst trials (all but 1/{settings.reduction_factor}) stop early"]
    lines = [f"search: Optuna TPE (seed {settings.seed}), {settings.num_samples} trials, optimising "
             f"{metric} ({mode}); sampled:"]
    for key, spec in space.items():
        if isinstance(spec, tuple):
            lines.append(f"  {key}: {spec[0]}{tuple(spec[1:]) if spec[0] != 'choice' else list(spec[1])}")
    fixed = {k: v for k, v in space.items() if not isinstance(v, tuple)}
    lines.append(f"  fixed: {fixed}")
    return lines
