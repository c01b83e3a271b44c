"""A sweep's plan: everything resolved and validated before Ray starts, and where it is kept.

A ``SweepPlan`` is saved as ``sweep.json`` beside Ray's experiment state, so ``--resume`` can rebuild the
trainable with the same resources (Ray's ``Tuner.restore`` needs the trainable again; the run config and
callbacks come back from Ray's snapshot).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs

from study.options import check_resources, resolve_storage, resolve_tracking_uri
from study.search import SearchSettings, check_pairing, optuna_storage_url, replicate_seeds
from vae_attention.errors import ConfigError, StudyError

SWEEP_FILE = "sweep.json"
RANGE_KINDS = ("loguniform", "uniform", "choice", "replicates")  # the first item of a search-space spec
CHECKPOINTS_TO_KEEP = 2  # a FactorVAE checkpoint with Adam state is ~66 MB; 50 trials × all would fill a disk


@dataclass
class SweepPlan:
    kind: str  # "disentangle" | "anomaly"
    study: str
    name: str
    preset: str
    storage: str
    tracking_uri: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    max_failures: int
    data_source: str
    trials: list[dict[str, Any]]  # the grid; for optuna, the corners of the space, for checks
    search: SearchSettings = field(default_factory=SearchSettings)  # scheduler or searcher, and its settings
    space: dict[str, Any] | None = None  # optuna: fixed values, ("loguniform", lo, hi)/("choice", [..]) ranges
    # and seed = ("replicates", [..]): every sampled configuration runs once per seed
    address: str | None = None
    register_model: str | None = None  # --register NAME: the best trial's model is registered under NAME at the end

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def make_plan(args, *, kind: str, study: str, name: str, trials: list[dict[str, Any]],
              space: dict[str, Any] | None = None) -> SweepPlan:
    """A plan from parsed options (defaults applied); storage, tracking URI and resources are checked here."""
    check_resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.max_failures)
    settings = search_settings(args)
    storage, tracking_uri = resolve_storage(args.storage), resolve_tracking_uri(args.tracking_uri)
    if settings.algorithm == "optuna":
        check_pairing(settings, replicate_seeds(space))
        settings = dataclasses.replace(settings, storage=optuna_storage_url(storage, name, tracking_uri))
    return SweepPlan(
        kind=kind, study=study, name=name, preset="quick" if args.quick else "full",
        storage=storage, tracking_uri=tracking_uri,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        data_source="unresolved", trials=trials, search=settings, space=space,
        address=args.address, register_model=getattr(args, "register", None),
    )


def search_settings(args) -> SearchSettings:
    """The scheduling options the user gave (``--search``, ``--scheduler``, ``--metric``, …); the rest keep their
    defaults. Optuna's own options without ``--search optuna`` are refused (they would be silently ignored)."""
    given = {k: getattr(args, a) for k, a in (("algorithm", "search"), ("scheduler", "scheduler"),
                                              ("metric", "metric"), ("mode", "mode"),
                                              ("grace_period", "grace_period"),
                                              ("reduction_factor", "reduction_factor"),
                                              ("num_samples", "num_samples"), ("objective", "objective"),
                                              ("seed", "search_seed")) if getattr(args, a, None) is not None}
    settings = SearchSettings(**given)  # first: names --search optuna for a --scheduler optuna of old habit
    optuna_only = [f"--{a.replace('_', '-')}" for a in ("objective", "num_samples", "search_seed")
                   if getattr(args, a, None) is not None]
    if optuna_only and settings.algorithm != "optuna":
        raise ConfigError(f"{', '.join(optuna_only)} {'needs' if len(optuna_only) == 1 else 'need'} --search optuna")
    return settings


def _fs(path: str):
    return pyarrow.fs.FileSystem.from_uri(path)


def save_plan(plan: SweepPlan) -> None:
    fs, root = _fs(plan.path)
    fs.create_dir(root, recursive=True)
    data = dataclasses.asdict(plan)  # the search settings become a nested dict, as they were written before
    data.pop("address")
    tmp = f"{root}/{SWEEP_FILE}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(data, indent=1, sort_keys=True).encode())
    fs.move(tmp, f"{root}/{SWEEP_FILE}")


def load_plan(storage: str, name: str) -> SweepPlan:
    path = f"{storage.rstrip('/')}/{name}"
    fs, root = _fs(path)
    try:
        with fs.open_input_stream(f"{root}/{SWEEP_FILE}") as stream:
            data = json.loads(stream.read())
    except (FileNotFoundError, OSError):
        raise StudyError(f"nothing to resume: {path} has no {SWEEP_FILE} (was the sweep started here?)") from None
    if data.get("space"):  # JSON turned the ("loguniform", lo, hi) range specs into lists
        data["space"] = {k: tuple(v) if isinstance(v, list) and v and v[0] in RANGE_KINDS else v
                         for k, v in data["space"].items()}
    data["search"] = SearchSettings.from_saved(data.get("search", {}))  # older plans: scheduler="optuna"
    return SweepPlan(**data)


def ray_state_saved(path: str) -> bool:
    """Whether Ray has written the sweep's experiment state (it does so at start, then every ~10 s)."""
    fs, root = _fs(path)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return False
    return any(Path(e.path).name.startswith("experiment_state-") for e in entries)


def sweep_exists(plan: SweepPlan) -> str | None:
    """Why ``plan.name`` is taken (Ray state in storage, or trial runs in MLflow), or None."""
    if ray_state_saved(plan.path):
        return f"{plan.path} holds its Ray state"
    if optuna_study_exists(plan):
        return f"{plan.search.storage} holds its Optuna study"
    # imported here: mlflow takes seconds to import, and a dry run or a usage error never needs it
    from study.tracking import has_trial_runs

    if has_trial_runs(plan.tracking_uri, plan.name):
        return f"MLflow experiment {plan.name!r} at {plan.tracking_uri} has trial runs"
    return None


def optuna_study_exists(plan: SweepPlan) -> bool:
    """Whether the plan's Optuna database already holds a study of this name (a fresh start would continue it)."""
    if not plan.search.storage or not Path(plan.search.storage.removeprefix("sqlite:///")).is_file():
        return False
    import optuna  # imported here: ~0.5 s, and only an Optuna sweep with an existing database needs it

    return plan.name in optuna.get_all_study_names(plan.search.storage)
