"""How a sweep chooses its trials (``--search``) and how it runs them (``--scheduler``).

Search:
- ``grid`` (default): the study's exact grid, one Ray ``grid_search``; seeds are a grid axis.
- ``optuna``: Ray's ``OptunaSearch`` (TPE, seeded by ``--search-seed``) samples ``--num-samples``
  configurations from the study's ranges (log-uniform γ, λ, lr; the model as a choice). ``--objective pareto``
  makes it multi-objective (disentanglement ↑, held-out reconstruction ↓). Seeds are replicates, never a
  searched parameter: Ray's ``Repeater`` runs each sampled configuration once per seed of the plan
  (``--seeds``), so a sweep has num_samples × seeds Ray trials. Replicate i (Ray's ``__trial_index__``) gets
  ``seed = seeds[i]`` in its params on the driver, so its MLflow run, trial name and trainable all carry it.
  Optuna is told the mean over the seeds of the objective (of each objective for Pareto), and each seed's
  value as the trial's user attrs. A configuration whose replicates did not all report it gets no mean
  (a partial mean is not the seed mean): it is told FAIL if a replicate errored, else PRUNED.

Scheduler:
- ``fifo`` (default): every trial runs to the end as resources allow.
- ``asha``: Ray's ``ASHAScheduler``: at rungs (grace period × reduction factor^k, in the study's units:
  iterations or epochs) the worst trials by the study's ASHA metric (``--metric`` under ``--search grid``),
  which every report carries (``recon_loss``, ``loss``), stop early. Ray 2.60 does not restore ASHA's rung
  records on ``--resume``: resumed trials continue from their checkpoints with empty rungs, so rungs already
  passed are not re-judged and the next rungs compare only the trials that report after the resume.
- ``--search optuna --scheduler asha`` (Ray's usual pairing) takes ONE seed: ASHA judges single trials by
  the ASHA metric, Optuna optimises ``--metric`` (its objective), and a trial ASHA stopped before its last
  iteration/epoch is told to Optuna as PRUNED. With more seeds the pair is refused in one line: Ray documents
  that ``Repeater`` and early stopping do not mix, since ASHA would stop one seed of a configuration and not
  another, and the seed mean would not exist.

The Optuna study lives in an RDB (SQLite) storage, named after the sweep: ``<storage>/<name>/optuna.db`` when
Ray's storage is a local or shared folder, else ``<name>.optuna.db`` beside the MLflow store on the driver
(the SQLite tracking file's folder, else the working directory), so ``optuna-dashboard sqlite:///<path>``
opens it, live or later. On ``--resume`` Ray restores the searcher (the Repeater's groups, the Ray ↔ Optuna
trial map, the sampler's RNG) from its last experiment snapshot (written every ~10 s) and the study from the
database. Ray saves the searcher's state with its trials in one snapshot, while the searcher (on the driver)
writes each ask and tell to the database at once, so the database can only be AHEAD of the snapshot, in two
ways, and both are reconciled (tests/study/test_optuna_search.py):
(a) configurations asked after the snapshot are RUNNING in the database but owned by no restored trial: the
searcher adopts them, oldest first, as its next suggestions (their sampled values run; nothing is asked
twice or lost), then reseeds the sampler, whose restored RNG would otherwise draw the adopted values again;
(b) configurations told after the snapshot: Ray reruns their replicates from their last checkpoints and the
second tell is skipped (a finished Optuna trial is never changed), so the stored mean is the first.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX

from vae_attention.errors import ConfigError

SEARCHES = ("grid", "optuna")
SCHEDULERS = ("fifo", "asha")
OBJECTIVES = ("single", "pareto")
REPLICATES = "replicates"  # the space's spec kind for the seeds, and the key of per-seed values in a result
OPTUNA_FILE = "optuna.db"


@dataclass(frozen=True)
class SearchSettings:
    scheduler: str = "fifo"
    metric: str | None = None
    mode: str | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    num_samples: int = 10  # optuna: sampled configurations (each runs once per seed)
    objective: str = "single"
    seed: int = 0
    algorithm: str = "grid"  # --search
    storage: str | None = None  # optuna: the RDB URL of its study (sqlite:////abs/path)

    def __post_init__(self) -> None:
        if self.scheduler == "optuna":
            raise ConfigError("--scheduler optuna is now --search optuna (with --scheduler fifo, the default, or asha)")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.algorithm not in SEARCHES:
            raise ConfigError(f"--search {self.algorithm!r} is not one of {', '.join(SEARCHES)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "pareto" and self.algorithm != "optuna":
            raise ConfigError("--objective pareto needs --search optuna")
        if self.mode not in (None, "min", "max"):
            raise ConfigError(f"--mode must be min or max, got {self.mode!r}")
        if self.grace_period < 1 or self.reduction_factor < 2 or self.num_samples < 1:
            raise ConfigError("--grace-period must be >= 1, --reduction-factor >= 2, --num-samples >= 1")

    @classmethod
    def from_saved(cls, data: dict) -> SearchSettings:
        """Settings from a saved plan; plans saved before ``--search`` existed said ``scheduler="optuna"``."""
        data = dict(data)
        if data.get("scheduler") == "optuna":
            data.update(scheduler="fifo", algorithm="optuna")
        return cls(**data)


def check_pairing(settings: SearchSettings, seeds: list[int]) -> None:
    """``--search optuna --scheduler asha`` takes one seed (see the module docstring)."""
    if settings.algorithm == "optuna" and settings.scheduler == "asha" and len(seeds) > 1:
        raise ConfigError(f"--search optuna --scheduler asha takes one seed, got {len(seeds)} (--seeds "
                          f"{' '.join(map(str, seeds))}): ASHA would stop a configuration's seeds separately, so "
                          "their mean would not exist; pass one --seeds value or --scheduler fifo")


def optuna_storage_url(storage: str, name: str, tracking_uri: str) -> str:
    """Where the sweep's Optuna study lives (module docstring): a SQLite URL with an absolute path."""
    if not re.match(r"^[a-z][a-z0-9+.-]*://", storage) or storage.startswith("file://"):
        path = Path(storage.removeprefix("file://")) / name / OPTUNA_FILE
    else:  # object storage: SQLite needs a file system, so the driver's, beside MLflow's store
        match = re.fullmatch(r"sqlite:///(.+)", tracking_uri)
        folder = Path(match.group(1)).parent if match else Path.cwd()
        path = folder / f"{name}.{OPTUNA_FILE}"
    return f"sqlite:///{path.resolve()}"


def resolve_metric(settings: SearchSettings, defaults: dict[str, tuple[str, str]]) -> tuple[Any, Any]:
    """The sweep's objective: the searcher's metric(s) and mode(s) under Optuna, else ASHA's, else none."""
    if settings.algorithm == "optuna":
        if settings.objective == "pareto":
            metrics, modes = defaults["pareto"]
            return list(metrics), list(modes)
        metric, mode = defaults["optuna"]
        return settings.metric or metric, settings.mode or mode
    if settings.scheduler == "asha":
        return asha_metric(settings, defaults)
    return None, None


def asha_metric(settings: SearchSettings, defaults: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """ASHA's rung metric: ``--metric`` under a grid; under Optuna (``--metric`` is its objective) the study's."""
    metric, mode = defaults["asha"]
    if settings.algorithm == "grid":
        return settings.metric or metric, settings.mode or mode
    return metric, mode


def _domain(spec):
    kind, *args = spec
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "choice":
        return tune.choice(list(args[0]))
    raise ConfigError(f"unknown range kind {kind!r}")


def replicate_seeds(space: dict) -> list[int]:
    """The seeds each sampled configuration runs with (the space's ``("replicates", [...])`` spec)."""
    spec = space["seed"]
    if isinstance(spec, tuple) and spec[0] == REPLICATES:
        return [int(s) for s in spec[1]]
    return [int(spec)]


def searched_space(space: dict, params_key: str) -> dict:
    """Ray's param space: the ranges as Tune domains, fixed values as they are; the seed comes per replicate."""
    # sorted: the sampler draws parameters in this order, so a saved and reloaded space samples the same
    return {params_key: {k: (_domain(v) if isinstance(v, tuple) else v) for k, v in sorted(space.items())
                         if k != "seed"}}


def persistent_optuna_search(params_key: str, **kwargs):
    """``OptunaSearch`` that keeps its study in RDB storage and reconciles it with Ray's snapshot on restore.

    Its parameters carry the study's names (``gamma``, not Tune's flattened ``params/gamma``), as the
    dashboard and the report show them; suggestions are nested under ``params_key`` again for the trainable.
    """
    # imported here: it imports optuna (~0.5 s), which only an Optuna sweep needs
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own progress lines

    class PersistentOptunaSearch(OptunaSearch):
        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            if not super().set_search_properties(metric, mode, config, **spec):
                return False
            self._space = {k.removeprefix(f"{params_key}/"): v for k, v in self._space.items()}
            if self._ot_study.metric_names is None:  # the dashboard then shows "disentanglement", not "Objective"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._ot_study.set_metric_names(self.metric if isinstance(self.metric, list) else [self.metric])
            self._orphans = self._find_orphans()  # a fresh start owns no Optuna trial yet
            return True

        def restore(self, checkpoint_path: str) -> None:
            super().restore(checkpoint_path)
            self._orphans = self._find_orphans()

        def _find_orphans(self) -> list:
            """RUNNING trials in the database that no trial of Ray's restored state owns, oldest first."""
            owned = {t.number for t in self._ot_trials.values()}
            return [t for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                    if t.number not in owned]

        def suggest(self, trial_id: str):
            if trial_id not in self._ot_trials and getattr(self, "_orphans", None):
                frozen = self._orphans.pop(0)
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
                self._ot_study.sampler.reseed_rng()  # else it would draw the adopted values next
            return {params_key: super().suggest(trial_id)}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials[trial_id]
            stored = self._ot_study.get_trials(deepcopy=False)[ot_trial.number]
            if stored.state.is_finished():  # told before Ray's last snapshot; the rerun does not change it
                return
            result = result or {}
            for key, value in result.get(REPLICATES, {}).items():
                ot_trial.set_user_attr(key, value)
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if all(m in result for m in metrics):
                values = [result[m] for m in metrics]
                self._ot_study.tell(ot_trial, values if isinstance(self.metric, list) else values[0])
            else:
                state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
                self._ot_study.tell(ot_trial, state=state)

    return PersistentOptunaSearch(**kwargs)


class SeedReplicates(Repeater):
    """Ray's ``Repeater`` that sets ``seed = seeds[__trial_index__]`` and tells the searcher seed means.

    A replicate counts when it ran to ``total`` (``step_key`` in its last result) and reported every metric.
    """

    def __init__(self, searcher, seeds: list[int], params_key: str, total: int, step_key: str):
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds, self.params_key, self.total, self.step_key = list(seeds), params_key, total, step_key

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        # a new dict: the group's config is shared (shallowly) by its replicates
        return {**config, self.params_key: {**config.get(self.params_key, {}),
                                            "seed": self.seeds[config[TRIAL_INDEX]]}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs) -> None:
        group = self._trial_id_to_group[trial_id]
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        ran = bool(result) and not error and result.get(self.step_key, 0) >= self.total
        values = tuple(float(result[m]) if ran and m in result else math.nan for m in metrics)
        group.report(trial_id, (values, "error" if error else "ran" if ran else "stopped"))
        if not group.finished_reporting():
            return
        scores = group.scores()  # in replicate order
        per_metric = list(zip(*(v for v, _ in scores), strict=True))
        # None, not NaN, for a seed without a value: user attrs are JSON, which the dashboard's browser must parse
        told: dict[str, Any] = {REPLICATES: {"seeds": self.seeds, **{
            f"{m}_per_seed": [x if math.isfinite(x) else None for x in v]
            for m, v in zip(metrics, per_metric, strict=True)}}}
        if all(math.isfinite(x) for v in per_metric for x in v):
            told.update({m: float(sum(v) / len(v)) for m, v in zip(metrics, per_metric, strict=True)})
        self.searcher.on_trial_complete(group.primary_trial_id, result=told,
                                        error=any(o == "error" for _, o in scores))


def tune_setup(settings: SearchSettings, defaults: dict, *, trials: list[dict], space: dict | None, total: int,
               time_attr: str, max_concurrent: int, params_key: str, study_name: str) -> tuple[dict, dict]:
    """``(param_space, TuneConfig kwargs)`` for the chosen search and scheduler."""
    kwargs: dict[str, Any] = {"max_concurrent_trials": max_concurrent or None}
    if settings.scheduler == "asha":
        metric, mode = asha_metric(settings, defaults)
        kwargs["scheduler"] = ASHAScheduler(time_attr=time_attr, metric=metric, mode=mode, max_t=total,
                                            grace_period=settings.grace_period,
                                            reduction_factor=settings.reduction_factor)
    if settings.algorithm == "grid":
        return {params_key: tune.grid_search(trials)}, kwargs
    import optuna

    seeds = replicate_seeds(space)
    metric, mode = resolve_metric(settings, defaults)
    searcher = persistent_optuna_search(params_key, metric=metric, mode=mode, seed=settings.seed, study_name=study_name,
                                        storage=optuna.storages.RDBStorage(settings.storage))
    kwargs.update(search_alg=SeedReplicates(searcher, seeds, params_key, total, time_attr),
                  num_samples=settings.num_samples * len(seeds))
    return searched_space(space, params_key), kwargs


def planned_trials(settings: SearchSettings, trials: list[dict], space: dict | None) -> int:
    """How many Ray trials the sweep runs."""
    if settings.algorithm == "optuna":
        return settings.num_samples * len(replicate_seeds(space))
    return len(trials)


def describe(settings: SearchSettings, defaults: dict, space: dict | None, total: int, unit: str) -> list[str]:
    """Dry-run lines for a scheduler or search (a grid is listed trial by trial instead)."""
    lines = []
    if settings.algorithm == "optuna":
        metric, mode = resolve_metric(settings, defaults)
        seeds = replicate_seeds(space)
        lines += [f"search: Optuna TPE (seed {settings.seed}), {settings.num_samples} configurations × "
                  f"{len(seeds)} seeds {seeds} = {planned_trials(settings, [], space)} trials, optimising the "
                  f"seed mean of {metric} ({mode}); study in {settings.storage}; sampled:"]
        for key, spec in space.items():
            if isinstance(spec, tuple) and spec[0] != REPLICATES:
                lines.append(f"  {key}: {spec[0]}{tuple(spec[1:]) if spec[0] != 'choice' else list(spec[1])}")
        fixed = {k: v for k, v in space.items() if not isinstance(v, tuple)}
        lines.append(f"  fixed: {fixed}")
    if settings.scheduler == "asha":
        metric, mode = asha_metric(settings, defaults)
        rungs, t = [], settings.grace_period
        while t < total:
            rungs.append(t)
            t *= settings.reduction_factor
        lines.append(f"scheduler: ASHA on {metric} ({mode}); rungs at {unit} {rungs} of {total}: at each rung the "
                     f"worst trials (all but 1/{settings.reduction_factor}) stop early")
    return lines
